"""Test-wide settings: a private persistent receptive-field cache per session."""

import atexit
import os
import shutil
import tempfile

# Tests must measure the probe, not a cache left by an earlier run or by the user.
_CACHE = tempfile.mkdtemp(prefix="captum-topk-cache-")
os.environ["CAPTUM_TOPK_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
