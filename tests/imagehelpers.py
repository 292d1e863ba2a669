"""Shared by tests/test_images.py and tests/test_images_files.py: a test picture whose
flips and rotations show, PNG chunk building, and the one-line error check."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from panini_cli.images import ImageError


def pattern(h=40, w=60, dtype=np.uint8):
    """Quadrants in distinct colours plus a gradient, so any flip or rotation shows."""
    top = np.iinfo(dtype).max
    a = np.zeros((h, w, 3), np.float64)
    a[: h // 2, : w // 2] = (0, 0, 1)          # red top-left (BGR)
    a[: h // 2, w // 2:] = (0, 1, 0)           # green top-right
    a[h // 2:, : w // 2] = (1, 0, 0)           # blue bottom-left
    a[..., 1] += np.linspace(0, 0.3, w)[None]
    return np.clip(np.rint(a * top / 1.3), 0, top).astype(dtype)


def png_chunk(tag, body):
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def assert_one_line_error(exc: ImageError, path: Path, *words):
    s = str(exc)
    assert "\n" not in s and "\r" not in s, s
    assert str(path) in s or path.name in s, s
    for w in words:
        assert w.lower() in s.lower(), s
