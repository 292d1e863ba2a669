"""Tests for panini_cli.images: every input kind, every way a file can be bad, safe writes."""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from panini_cli import images as I
from panini_cli.images import ImageError, read_image, write_image

SHARED = Path(os.environ.get("PANINI_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
PHOTO = SHARED / "data" / "whole_photos" / "facerec_two_people.jpg"
needs_shared = pytest.mark.skipif(not PHOTO.is_file(), reason=f"shared test photos not found at {PHOTO}")


def pattern(h=40, w=60, dtype=np.uint8):
    """Quadrants in distinct colours plus a gradient, so any flip or rotation shows."""
    top = np.iinfo(dtype).max
    a = np.zeros((h, w, 3), np.float64)
    a[: h // 2, : w // 2] = (0, 0, 1)          # red top-left (BGR)
    a[: h // 2, w // 2:] = (0, 1, 0)           # green top-right
    a[h // 2:, : w // 2] = (1, 0, 0)           # blue bottom-left
    a[..., 1] += np.linspace(0, 0.3, w)[None]
    return np.clip(np.rint(a * top / 1.3), 0, top).astype(dtype)


def exif_app1(orientation: int) -> bytes:
    tiff = b"MM\x00*" + struct.pack(">IHHHIHHI", 8, 1, 0x112, 3, 1, orientation, 0, 0)   # big-endian
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def jpeg_with_orientation(px, orientation):
    ok, buf = cv2.imencode(".jpg", px, [cv2.IMWRITE_JPEG_QUALITY, 95])
    b = buf.tobytes()
    return b[:2] + exif_app1(orientation) + b[2:]


def png_chunk(tag, body):
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def grey_alpha_png(grey, alpha):
    """A real PNG colour type 4 (grey + alpha), which OpenCV cannot write."""
    h, w = grey.shape
    raw = b"".join(b"\x00" + np.dstack([grey, alpha])[y].tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 4, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def assert_one_line_error(exc: ImageError, path: Path, *words):
    s = str(exc)
    assert "\n" not in s and "\r" not in s, s
    assert str(path) in s or path.name in s, s
    for w in words:
        assert w.lower() in s.lower(), s


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


# ------------------------------------------------------------------ bad files
def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _cut(data, frac=0.6):
    return data[: int(len(data) * frac)]


@pytest.mark.parametrize("name,make,words", [
    ("empty.jpg", lambda: b"", ["empty", "0 bytes"]),
    ("notes.png", lambda: b"hello, I am text\n" * 20, ["not an image"]),
    ("page.jpg", lambda: b"<!DOCTYPE html><html></html>", ["not an image"]),
    ("noise.webp", lambda: np.random.default_rng(0).bytes(5000), ["not an image"]),
    ("anim.png", lambda: b"GIF89a" + b"\x00" * 100, ["unsupported", "GIF"]),
    ("cut.jpg", lambda: _cut(cv2.imencode(".jpg", pattern(200, 300))[1].tobytes()), ["truncated"]),
    ("cut.png", lambda: _cut(cv2.imencode(".png", pattern(200, 300))[1].tobytes()), ["truncated"]),
    ("cut.bmp", lambda: _cut(cv2.imencode(".bmp", pattern(200, 300))[1].tobytes()), ["truncated"]),
    ("cut.tif", lambda: _cut(cv2.imencode(".tif", pattern(200, 300))[1].tobytes()), ["truncated"]),
    ("cut.webp", lambda: _cut(cv2.imencode(".webp", pattern(200, 300))[1].tobytes()), ["truncated"]),
    ("head.jpg", lambda: cv2.imencode(".jpg", pattern())[1].tobytes()[:20], ["truncated"]),
    ("corrupt.png", lambda: cv2.imencode(".png", pattern())[1].tobytes()[:40] + b"\x00" * 200, ["png"]),
])
def test_bad_files_fail_with_one_line(tmp_path, name, make, words):
    p = _write(tmp_path, name, make())
    with pytest.raises(ImageError) as e:
        read_image(p)
    assert_one_line_error(e.value, p, *words)
    assert e.value.path == p


def test_header_finds_truncation_without_the_decoder():
    from panini_cli.image_headers import parse_header
    jpg = cv2.imencode(".jpg", pattern(200, 300))[1].tobytes()
    png = cv2.imencode(".png", pattern(200, 300))[1].tobytes()
    assert "end-of-image" in parse_header(_cut(jpg, 0.95)).problem
    assert "IEND" in parse_header(png[:-12]).problem
    good = parse_header(jpg)
    assert good.problem is None and (good.width, good.height, good.fmt) == (300, 200, "jpeg")
    assert parse_header(jpg + b"trailing junk after EOI").problem is None     # common, harmless


@needs_shared
def test_truncated_real_photo(tmp_path):
    p = _write(tmp_path, "half.jpg", _cut(PHOTO.read_bytes(), 0.9))
    with pytest.raises(ImageError, match="truncated"):
        read_image(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)


def test_unicode_and_spaces_in_names(tmp_path):
    p = write_image(tmp_path / "été – photo 📷 01.png", pattern())
    assert np.array_equal(read_image(p).pixels, pattern())
    bad = _write(tmp_path, "größe falsch 写真.jpg", b"nope")
    with pytest.raises(ImageError) as e:
        read_image(bad)
    assert_one_line_error(e.value, bad, "not an image")


def test_control_characters_in_name_stay_one_line(tmp_path):
    bad = _write(tmp_path, "two\nlines.jpg", b"nope")
    s = str(pytest.raises(ImageError, read_image, bad).value)
    assert "\n" not in s and "two\\nlines.jpg" in s


def test_error_survives_pickling(tmp_path):
    err = ImageError(tmp_path / "x.png", "truncated")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.reason == "truncated"


# ------------------------------------------------------------------ decompression bombs
def test_bomb_rejected_from_header_before_decoding(tmp_path, monkeypatch):
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
    bomb = b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + png_chunk(b"IEND", b"")
    p = _write(tmp_path, "bomb.png", bomb)

    def no_decode(*a, **k):
        raise AssertionError("imdecode must not run on a bomb")
    monkeypatch.setattr(I.cv2, "imdecode", no_decode)
    with pytest.raises(ImageError) as e:
        read_image(p)
    assert_one_line_error(e.value, p, "too large", "30000x30000")


def test_jpeg_bomb_and_configurable_limit(tmp_path):
    data = bytearray(cv2.imencode(".jpg", pattern(100, 100))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)       # claims 3.6 gigapixels
    with pytest.raises(ImageError, match="too large"):
        read_image(_write(tmp_path, "bomb.jpg", bytes(data)))
    small = write_image(tmp_path / "s.png", pattern(100, 100))
    with pytest.raises(ImageError, match="too large"):
        read_image(small, max_pixels=5000)
    assert read_image(small, max_pixels=10_000).width == 100
    assert read_image(small, max_pixels=None).width == 100


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


# ------------------------------------------------------------------ safe writing
def test_write_refuses_to_overwrite_inputs(tmp_path):
    src = write_image(tmp_path / "in.png", pattern())
    before = src.read_bytes()
    (tmp_path / "link.png").symlink_to(src)
    os.link(src, tmp_path / "hard.png")
    guard = I.ProtectedPaths([src])
    for target in (src, tmp_path / "link.png", tmp_path / "hard.png", tmp_path / "." / "in.png"):
        with pytest.raises(ImageError) as e:
            write_image(target, np.zeros((5, 5, 3), np.uint8), protected=guard)
        assert_one_line_error(e.value, Path(target), "input")
    with pytest.raises(ImageError):
        write_image(src, np.zeros((5, 5, 3), np.uint8), protected=[str(src)])
    assert src.read_bytes() == before


def test_failed_write_leaves_no_temp_and_keeps_old_file(tmp_path, monkeypatch):
    target = write_image(tmp_path / "out.png", pattern())
    before = target.read_bytes()

    def boom(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(I.os, "replace", boom)
    with pytest.raises(ImageError) as e:
        write_image(target, np.zeros((40, 60, 3), np.uint8))
    assert_one_line_error(e.value, target, "no space")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.png"]
    assert target.read_bytes() == before


def test_bad_output_requests_write_nothing(tmp_path):
    for name, px in [("x.gif", pattern()), ("x.png", np.zeros((4, 4), np.float32)),
                     ("x.png", np.zeros((4, 4, 5), np.uint8))]:
        with pytest.raises(ImageError):
            write_image(tmp_path / name, px)
    with pytest.raises(ImageError, match="exists"):
        write_image(write_image(tmp_path / "o.png", pattern()), pattern(), overwrite=False)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["o.png"]


def test_write_creates_folders_and_normal_permissions(tmp_path):
    p = write_image(tmp_path / "a" / "b" / "c.jpg", pattern(), quality=80)
    umask = os.umask(0)
    os.umask(umask)
    assert p.is_file() and (p.stat().st_mode & 0o777) == 0o666 & ~umask


# ------------------------------------------------------------------ listing inputs
@pytest.fixture
def tree(tmp_path):
    for rel in ["a/img10.jpg", "a/img2.PNG", "a/notes.txt", "a/.hidden.jpg", "a/sub/deep.webp",
                "a/.cache/x.png", "b/one.tif", "loose.bmp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "readme.md").write_text("hi")
    return tmp_path


def rels(items):
    return [str(r) for _, r in items]


def test_list_folder_flat_and_recursive(tree):
    assert rels(I.list_images([tree / "a"])) == ["img2.PNG", "img10.jpg"]          # natural order
    assert rels(I.list_images([tree / "a"], recursive=True)) == ["img2.PNG", "img10.jpg", "sub/deep.webp"]


def test_list_glob_files_dedup_and_sorted(tree):
    items = I.list_images([tree / "loose.bmp", str(tree / "a" / "*.jpg"), tree / "a", str(tree / "**" / "*.tif")])
    assert rels(items) == ["img2.PNG", "img10.jpg", "b/one.tif", "loose.bmp"]
    problems = []
    assert len(I.list_images([tree / "b" / "one.tif", tree / "b"], problems=problems)) == 1 and not problems
    paths = [p for p, _ in items]
    assert len(set(map(os.path.realpath, paths))) == len(paths)


def test_list_reports_explicit_problems(tree):
    problems = []
    items = I.list_images([tree / "readme.md", tree / "missing.jpg", str(tree / "*.gif"), tree / "b",
                           tree / "a" / "sub" / ".."], problems=problems)
    assert rels(items) == ["img2.PNG", "img10.jpg", "one.tif"]
    msgs = [str(p) for p in problems]
    assert any("readme.md" in m and "not a supported image type" in m for m in msgs)
    assert any("missing.jpg" in m and "no such file" in m for m in msgs)
    assert any("*.gif" in m and "no image files match" in m for m in msgs)
    assert all("\n" not in m for m in msgs)
    with pytest.raises(ImageError, match="readme.md"):
        I.list_images([tree / "readme.md"])


def test_list_can_exclude_the_output_folder(tree):
    items = I.list_images([tree / "a"], recursive=True, exclude=[tree / "a" / "sub"])
    assert rels(items) == ["img2.PNG", "img10.jpg"]


def test_list_reports_output_name_collisions(tree):
    (tree / "c").mkdir()
    (tree / "c" / "one.tif").write_bytes(b"x")
    problems = []
    items = I.list_images([tree / "b", tree / "c"], problems=problems)
    assert len(items) == 1 and len(problems) == 1 and "same output" in str(problems[0])


def test_modules_do_not_import_torch():
    code = "import sys, panini_cli.images, panini_cli.faces; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
