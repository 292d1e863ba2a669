"""Tests for panini_cli.images, the pixels: every format round trip (depth, grey, alpha),
EXIF orientation, and the 8-bit BGR model view and back. Bad files, bombs, safe writes and
input listing: test_images_files.py."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from panini_cli import images as I
from panini_cli.images import ImageError, read_image, write_image

from imagehelpers import assert_one_line_error, pattern, png_chunk


def exif_app1(orientation: int) -> bytes:
    tiff = b"MM\x00*" + struct.pack(">IHHHIHHI", 8, 1, 0x112, 3, 1, orientation, 0, 0)   # big-endian
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def jpeg_with_orientation(px, orientation):
    ok, buf = cv2.imencode(".jpg", px, [cv2.IMWRITE_JPEG_QUALITY, 95])
    b = buf.tobytes()
    return b[:2] + exif_app1(orientation) + b[2:]


def grey_alpha_png(grey, alpha):
    """A real PNG colour type 4 (grey + alpha), which OpenCV cannot write."""
    h, w = grey.shape
    raw = b"".join(b"\x00" + np.dstack([grey, alpha])[y].tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 4, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("ext,lossless", [(".png", True), (".bmp", True), (".tif", True), (".tiff", True),
                                          (".jpg", False), (".jpeg", False), (".webp", False)])
def test_colour_round_trip_every_format(tmp_path, ext, lossless):
    px = pattern()
    p = write_image(tmp_path / f"x{ext}", px)
    im = read_image(p)
    assert im.pixels.shape == px.shape and im.bit_depth == 8 and not im.is_grey and im.alpha is None
    err = np.abs(im.pixels.astype(int) - px).mean()
    assert err == 0 if lossless else err < 4, err


def test_lossless_webp_with_quality_101(tmp_path):
    px = pattern()
    assert np.array_equal(read_image(write_image(tmp_path / "x.webp", px, quality=101)).pixels, px)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_round_trip_is_exact(tmp_path, ext):
    px = pattern(dtype=np.uint16)
    px[0, 0] = (1, 2, 65535)                       # values 8 bits cannot hold
    im = read_image(write_image(tmp_path / f"deep{ext}", px))
    assert im.bit_depth == 16 and im.pixels.dtype == np.uint16
    assert np.array_equal(im.pixels, px)


def test_16bit_to_8bit_formats_is_rounded(tmp_path):
    px = np.full((8, 8, 3), 257 * 100 + 120, np.uint16)      # 100.47 in 8-bit terms
    im = read_image(write_image(tmp_path / "x.bmp", px))
    assert im.bit_depth == 8 and int(im.pixels[0, 0, 0]) == 100


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".jpg", ".webp"])
def test_grey_round_trip(tmp_path, ext):
    g = np.tile(np.arange(0, 240, 4, dtype=np.uint8), (30, 1))
    im = read_image(write_image(tmp_path / f"g{ext}", g, quality=101 if ext == ".webp" else 95))
    if ext != ".webp":                              # WebP has no grey mode; stays colour
        assert im.is_grey and im.pixels.ndim == 2
    assert np.abs(I.to_bgr8(im)[..., 1].astype(int) - g).max() <= 3


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".webp"])
def test_alpha_round_trip(tmp_path, ext):
    px, a = pattern(), np.tile(np.linspace(0, 255, 60).astype(np.uint8), (40, 1))
    im = read_image(write_image(tmp_path / f"a{ext}", px, a, quality=101))
    assert im.alpha is not None and np.array_equal(im.alpha, a)
    assert np.array_equal(im.pixels[a > 0], px[a > 0])


def test_16bit_alpha_png(tmp_path):
    px, a = pattern(dtype=np.uint16), np.full((40, 60), 1234, np.uint16)
    im = read_image(write_image(tmp_path / "a16.png", px, a))
    assert im.bit_depth == 16 and im.alpha.dtype == np.uint16 and np.array_equal(im.alpha, a)


def test_grey_plus_alpha_png_is_read_as_grey(tmp_path):
    g = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    a = np.full((6, 8), 200, np.uint8)
    (tmp_path / "ga.png").write_bytes(grey_alpha_png(g, a))
    im = read_image(tmp_path / "ga.png")
    assert im.is_grey and np.array_equal(im.pixels, g) and np.array_equal(im.alpha, a)


def test_jpeg_cannot_keep_alpha(tmp_path):
    with pytest.raises(ImageError) as e:
        write_image(tmp_path / "x.jpg", pattern(), np.zeros((40, 60), np.uint8))
    assert_one_line_error(e.value, tmp_path / "x.jpg", "transparency")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ EXIF orientation
@pytest.mark.parametrize("o", range(1, 9))
def test_jpeg_exif_orientation_matches_opencv_display(tmp_path, o):
    data = jpeg_with_orientation(pattern(), o)
    (tmp_path / "o.jpg").write_bytes(data)
    im = read_image(tmp_path / "o.jpg")
    shown = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)   # applies EXIF itself
    assert im.orientation == o
    assert np.array_equal(im.pixels, shown)


def test_orientation_6_means_rotate_clockwise(tmp_path):
    """Independent of OpenCV: stored landscape with red top-left -> portrait, red top-right."""
    (tmp_path / "o6.jpg").write_bytes(jpeg_with_orientation(pattern(), 6))
    px = read_image(tmp_path / "o6.jpg").pixels
    assert px.shape[:2] == (60, 40)
    assert px[2, -3, 2] > 150 and px[2, -3, 0] < 60       # red now at the top right
    assert px[2, 2, 0] > 150                               # blue (was bottom-left) at the top left
    assert px[-3, -3, 1] > 150 and px[-3, -3, 2] < 60      # green (was top-right) at the bottom right


def test_png_and_webp_exif_orientation(tmp_path):
    px = pattern()
    tiff = b"II*\x00" + struct.pack("<IHHHIHHI", 8, 1, 0x112, 3, 1, 8, 0, 0)
    png = cv2.imencode(".png", px)[1].tobytes()
    png = png[:33] + png_chunk(b"eXIf", tiff) + png[33:]
    (tmp_path / "o.png").write_bytes(png)
    webp = cv2.imencode(".webp", px, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    riff = lambda t, b: t + struct.pack("<I", len(b)) + b + b"\x00" * (len(b) & 1)   # noqa: E731
    body = b"WEBP" + riff(b"VP8X", b"\x08\x00\x00\x00" + (59).to_bytes(3, "little") + (39).to_bytes(3, "little")) \
        + webp[12:] + riff(b"EXIF", tiff)
    (tmp_path / "o.webp").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    for name in ("o.png", "o.webp"):
        im = read_image(tmp_path / name)
        assert im.orientation == 8 and np.array_equal(im.pixels, np.rot90(px, 1)), name


def test_tiff_orientation_applied_exactly_once(tmp_path):
    px = pattern()
    rgb = px[..., ::-1].copy()
    raw = rgb.tobytes()
    tags = [(256, 3, 1, 60), (257, 3, 1, 40), (258, 3, 3, 8), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, 14), (274, 3, 1, 6), (277, 3, 1, 3), (278, 3, 1, 40), (279, 4, 1, len(raw))]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHIHH", t, ty, n, v, 0) if ty == 3 and n == 1 else struct.pack("<HHII", t, ty, n, v)
        for t, ty, n, v in tags) + b"\x00" * 4
    (tmp_path / "o.tif").write_bytes(b"II*\x00" + struct.pack("<I", 14 + len(raw)) + struct.pack("<3H", 8, 8, 8)
                                     + raw + ifd)
    im = read_image(tmp_path / "o.tif")
    assert np.array_equal(im.pixels, np.rot90(px, -1))


def test_garbage_exif_is_ignored(tmp_path):
    ok, buf = cv2.imencode(".jpg", pattern())
    bad = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"            # IFD offset far past the end
    b = buf.tobytes()
    (tmp_path / "e.jpg").write_bytes(b[:2] + b"\xff\xe1" + struct.pack(">H", len(bad) + 2) + bad + b[2:])
    assert read_image(tmp_path / "e.jpg").orientation == 1


# ------------------------------------------------------------------ model view and back
def test_to_bgr8_and_from_bgr_restore_depth_grey_and_alpha():
    deep = I.Image(np.full((4, 6), 257 * 200, np.uint16), np.full((4, 6), 65535, np.uint16), 16, True)
    v = I.to_bgr8(deep)
    assert v.shape == (4, 6, 3) and v.dtype == np.uint8 and (v == 200).all()
    up = cv2.resize(v, (12, 8))
    back = I.from_bgr(up, deep)
    assert back.pixels.shape == (8, 12) and back.pixels.dtype == np.uint16 and (back.pixels == 257 * 200).all()
    assert back.alpha.shape == (8, 12) and (back.alpha == 65535).all() and back.bit_depth == 16
    assert I.to_bgr(deep).dtype == np.uint16


def test_looks_grey():
    assert I.looks_grey(cv2.cvtColor(np.arange(64, dtype=np.uint8).reshape(8, 8), cv2.COLOR_GRAY2BGR))
    assert not I.looks_grey(pattern())
