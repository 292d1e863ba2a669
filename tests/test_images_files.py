"""Tests for panini_cli.images, the files: every way an input can be bad fails with one line,
decompression bombs are refused before decoding, writes are safe, and inputs are listed.
Pixels (round trips, EXIF orientation): test_images.py."""
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

from imagehelpers import assert_one_line_error, pattern, png_chunk

SHARED = Path(os.environ.get("PANINI_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
PHOTO = SHARED / "data" / "whole_photos" / "facerec_two_people.jpg"
needs_shared = pytest.mark.skipif(not PHOTO.is_file(), reason=f"shared test photos not found at {PHOTO}")


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
