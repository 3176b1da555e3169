#!/usr/bin/env python
r"""Peak memory of loading one image, per pixel, for every mode Pillow decodes.

Sets :data:`captum_topk.data.limits.LOAD_BYTES_PER_PIXEL`: for each kind of file (RGB / CMYK
/ EXIF-rotated JPEG, RGB / RGBA / palette-with-transparency / 16-bit / 1-bit PNG, animated
GIF, WebP, BMP) an image of ``--mpx`` megapixels is written, then read by
``captum_topk.data.images._read_rgb`` (header check, decode, EXIF rotation, conversion to RGB)
in a fresh subprocess, and the growth of its peak resident memory (``ru_maxrss``) over the
same process just before the read is divided by the number of pixels. A second column does
the same for the whole per-item path of a dataset (read + ``make_transform(224)``), which
adds the resized copy.

Usage::

    .venv/bin/python benchmarks/image_memory.py            # 8 Mpx images
    .venv/bin/python benchmarks/image_memory.py --mpx 24
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, resource, sys
sys.path.insert(0, {root!r})
from captum_topk.data.images import _read_rgb
from captum_topk.data.limits import ImageLimits
from captum_topk.models.info import make_transform
tf = make_transform(224)
limits = ImageLimits(max_pixels=None)
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = rss()
img = _read_rgb({path!r}, limits)
after_read = rss()
x = tf(img) if {transform!r} else None
del img
print(json.dumps({{"read": after_read - before, "item": rss() - before}}))
"""


def _write(kind: str, path: Path, w: int, h: int) -> None:
    yy, xx = np.mgrid[0:h, 0:w]
    grad = ((xx * 255) // max(w - 1, 1)).astype(np.uint8)
    rgb = np.stack([grad, ((yy * 255) // max(h - 1, 1)).astype(np.uint8), grad[::-1]], -1)
    if kind == "rgb.jpg":
        Image.fromarray(rgb).save(path, quality=90)
    elif kind == "cmyk.jpg":
        Image.fromarray(rgb).convert("CMYK").save(path, quality=90)
    elif kind == "exif6.jpg":
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(rgb).save(path, quality=90, exif=exif.tobytes())
    elif kind == "rgb.png":
        Image.fromarray(rgb).save(path, compress_level=1)
    elif kind == "rgba.png":
        Image.fromarray(np.dstack([rgb, grad]), "RGBA").save(path, compress_level=1)
    elif kind == "palette_t.png":
        p = Image.fromarray(rgb).quantize(64)
        p.save(path, transparency=0, compress_level=1)
    elif kind == "gray16.png":
        Image.fromarray((xx * 65535 // max(w - 1, 1)).astype(np.uint16)).save(path, compress_level=1)
    elif kind == "bit1.png":
        Image.fromarray(grad > 127).save(path)
    elif kind == "anim.gif":
        frames = [Image.fromarray(np.roll(rgb, 10 * i, 1)).quantize(64) for i in range(2)]
        frames[0].save(path, save_all=True, append_images=frames[1:])
    elif kind == "rgb.webp":
        Image.fromarray(rgb).save(path, quality=80, method=0)
    elif kind == "rgb.bmp":
        Image.fromarray(rgb).save(path)
    else:
        raise ValueError(kind)


KINDS = ("rgb.jpg", "cmyk.jpg", "exif6.jpg", "rgb.png", "rgba.png", "palette_t.png", "gray16.png",
         "bit1.png", "anim.gif", "rgb.webp", "rgb.bmp")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mpx", type=float, default=8.0, help="image size in megapixels")
    args = ap.parse_args()
    side = int(round((args.mpx * 1e6) ** 0.5))
    w, h = side + side // 3, side * 3 // 4  # 4:3-ish, about mpx megapixels
    n = w * h
    print(f"images {w} x {h} = {n / 1e6:.1f} M pixels; bytes per pixel of peak RSS growth")
    print(f"{'file':16s} {'read':>6s} {'read+transform':>15s}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            path = Path(tmp) / kind
            _write(kind, path, w, h)
            out = {}
            for transform in (False, True):
                code = _CHILD.format(root=str(ROOT), path=str(path), transform=transform)
                res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True)
                out[transform] = json.loads(res.stdout.strip().splitlines()[-1])
            read, item = out[False]["read"] / n, out[True]["item"] / n
            worst = max(worst, read, item)
            print(f"{kind:16s} {read:6.2f} {item:15.2f}")
    print(f"worst: {worst:.2f} bytes per pixel")


if __name__ == "__main__":
    main()
