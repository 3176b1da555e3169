"""Test-wide settings: a private persistent receptive-field cache per session."""

import os
import tempfile

# Tests must measure the probe, not a cache left by an earlier run or by the user.
os.environ["CAPTUM_TOPK_CACHE_DIR"] = tempfile.mkdtemp(prefix="captum-topk-cache-")
