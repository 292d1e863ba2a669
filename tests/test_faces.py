"""Tests for panini_cli.faces: detection on real photos, FFHQ alignment, seamless paste-back."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from panini_cli import faces as F
from panini_cli.faces import Face, FaceModelError
from panini_cli.images import read_image, to_bgr8

SHARED = Path(os.environ.get("PANINI_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
WHOLE = SHARED / "data" / "whole_photos"
ALIGNED = SHARED / "data" / "faces_aligned"
HAVE_DLIB = importlib.util.find_spec("dlib") is not None
HAVE_MODELS = importlib.util.find_spec("face_recognition_models") is not None
needs_shared = pytest.mark.skipif(not WHOLE.is_dir() or not ALIGNED.is_dir(),
                                  reason=f"shared face photos not found under {SHARED / 'data'}")
needs_dlib = pytest.mark.skipif(not (HAVE_DLIB and HAVE_MODELS),
                                reason="needs dlib and its models: pip install dlib-bin face-recognition-models")


def photo(name: str, folder: Path = WHOLE) -> np.ndarray:
    return to_bgr8(read_image(folder / name))


@pytest.fixture(scope="module")
def det68():
    d = F.DlibDetector("68")
    d._load()
    return d


@pytest.fixture(scope="module")
def det5():
    return F.DlibDetector("5")


@pytest.fixture(scope="module")
def two_people(det68):
    img = photo("facerec_two_people.jpg")
    return img, det68.detect(img)


def corner_error_pct(affine: np.ndarray, n: int) -> float:
    """Mean distance between the crop's corners and the image's corners, in % of n."""
    inv = cv2.invertAffineTransform(affine)
    c = np.array([[-0.5, -0.5], [n - 0.5, -0.5], [n - 0.5, n - 0.5], [-0.5, n - 0.5]])
    return float(np.linalg.norm(c @ inv[:, :2].T + inv[:, 2] - c, axis=1).mean() / n * 100)


def psnr(a, b, where=None):
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = d[where].mean() if where is not None else d.mean()
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def fake_face(box, lm5, score=1.0):
    return Face(tuple(map(float, box)), score, np.asarray(lm5, np.float64))


# ------------------------------------------------------------------ geometry without dlib
def test_ffhq_quad_by_hand():
    """Eyes (40,50),(60,50), mouth (42,70),(58,70): e2e=(20,0), e2m=(0,20),
    x = (40,0) scaled to max(40, 36) = 40, c = (50,52)."""
    q = F.ffhq_quad([[40, 50], [60, 50], [50, 60], [42, 70], [58, 70]])
    assert np.allclose(q, [[10, 12], [10, 92], [90, 92], [90, 12]])


def test_align_matrix_maps_quad_onto_crop_corners():
    lm = np.array([[40, 50], [60, 52], [50, 60], [42, 70], [58, 71]], float)
    for size in (512, 128, 64):
        a = F.align_matrix(lm, size)
        q = F.ffhq_quad(lm)
        got = q @ a[:, :2].T + a[:, 2]
        assert np.allclose(got, np.array([[0, 0], [0, size], [size, size], [size, 0]]) - 0.5, atol=1e-6)


def test_tilted_face_gives_upright_crop():
    """Draw a dark 'eyes and mouth' pattern rotated by 30 degrees; the crop must undo it."""
    img = np.full((300, 300, 3), 200, np.uint8)
    lm = np.array([[120, 130], [180, 130], [150, 160], [128, 195], [172, 195]], float)
    m = cv2.getRotationMatrix2D((150, 150), 30, 1.0)
    lm_rot = lm @ m[:, :2].T + m[:, 2]
    for x, y in lm_rot[[0, 1, 3, 4]]:
        cv2.circle(img, (int(round(x)), int(round(y))), 6, (0, 0, 0), -1)
    crop, a = F.align_face(img, fake_face((0, 0, 300, 300), lm_rot), 256)
    back = lm_rot @ a[:, :2].T + a[:, 2]
    assert abs(back[0, 1] - back[1, 1]) < 0.5                   # eyes level in the crop
    for x, y in back[[0, 1, 3, 4]]:
        assert crop[int(round(y)), int(round(x))].max() < 60    # dark dots where expected


def test_soft_mask_is_zero_at_edges_and_one_inside():
    m = F.soft_mask(512)
    assert m[:10].max() == 0 and m[:, -10:].max() == 0
    assert m[256, 256] == 1 and m[80:-80, 80:-80].min() == 1
    assert np.abs(np.diff(m, axis=1)).max() < 0.04              # no step anywhere


def test_select_faces_reasons():
    faces = [fake_face((0, 0, 10, 10), np.zeros((5, 2))), fake_face((400, 300, 500, 400), np.zeros((5, 2))),
             fake_face((10, 10, 210, 210), np.zeros((5, 2))), fake_face((300, 200, 360, 260), np.zeros((5, 2)))]
    kept, skipped = F.select_faces(faces, min_size=16)
    assert [f.size for f in kept] == [200, 100, 60] and "too small" in skipped[0][1]
    kept, skipped = F.select_faces(faces, max_faces=1)
    assert [f.size for f in kept] == [200] and sum("largest" in r for _, r in skipped) == 2
    kept, skipped = F.select_faces(faces, only_center=True, image_shape=(700, 900, 3))
    assert kept[0].box == (400, 300, 500, 400) and sum("centre" in r for _, r in skipped) == 2
    with pytest.raises(ValueError):
        F.select_faces(faces, only_center=True)


def test_face_scaled_round_trip():
    f = fake_face((10, 20, 110, 120), [[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]])
    back = f.scaled(0.5).scaled(2.0)
    assert np.allclose(back.box, f.box) and np.allclose(back.landmarks5, f.landmarks5)


# ------------------------------------------------------------------ missing packages and files
def test_missing_predictor_file_is_one_clear_line(tmp_path):
    d = F.DlibDetector(predictor_path=tmp_path / "nope.dat")
    with pytest.raises(FaceModelError) as e:
        d.detect(np.zeros((50, 50, 3), np.uint8))
    msg = str(e.value)
    assert "nope.dat" in msg and "\n" not in msg


def test_missing_dlib_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)              # makes `import dlib` fail
    with pytest.raises(FaceModelError, match="pip install dlib-bin"):
        F.DlibDetector().detect(np.zeros((50, 50, 3), np.uint8))


def test_missing_model_package_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(F.importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    monkeypatch.setattr(F.Path, "is_file", lambda self: False)
    with pytest.raises(FaceModelError, match="pip install face-recognition-models"):
        F.find_predictor("68")


# ------------------------------------------------------------------ detection on real photos
@needs_dlib
def test_detector_protocol_and_no_face(det68):
    assert isinstance(det68, F.FaceDetector)
    rng = np.random.default_rng(1)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), (0, 0), 3)
    assert det68.detect(noise) == []
    assert det68.detect(np.full((240, 320), 128, np.uint8)) == []          # grey input accepted
    with pytest.raises(TypeError):
        det68.detect(np.zeros((50, 50, 3), np.uint16))


@needs_dlib
@needs_shared
def test_no_face_in_background_region(det68):
    bg = photo("facerec_obama_and_biden.jpg")[:260, :420]                  # flag and backdrop only
    assert det68.detect(bg) == []


@needs_dlib
@needs_shared
@pytest.mark.parametrize("name,count", [("facerec_two_people.jpg", 2), ("facerec_obama_and_biden.jpg", 3),
                                        ("gfpgan_whole_Blake_Lively.jpg", 2), ("codeformer_whole_00.jpg", 4),
                                        ("gfpgan_whole_10045.png", 3), ("dlib_2008_004176.jpg", 7)])
def test_face_counts_checked_by_eye(det68, name, count):
    """Counts verified by looking at the photos (obama_and_biden has a girl at the lower right)."""
    faces = det68.detect(photo(name))
    assert len(faces) == count
    for f in faces:
        le, re_, nose, lm, rm = f.landmarks5
        assert le[0] < re_[0] and lm[0] < rm[0]                           # image-left first
        assert max(le[1], re_[1]) < nose[1] < min(lm[1], rm[1])          # eyes, nose, mouth top-down
        x0, y0, x1, y1 = f.box
        assert x0 - 5 < nose[0] < x1 + 5 and y0 - 5 < nose[1] < y1 + 5
        assert f.landmarks68.shape == (68, 2)
    assert [f.size for f in faces] == sorted((f.size for f in faces), reverse=True)


# ------------------------------------------------------------------ alignment on FFHQ-aligned crops
FFHQ_ALIGNED = ["gpen_ffhq_00000.png", "gpen_ffhq_00001.png", "gpen_ffhq_00002.png", "gpen_ffhq_00003.png",
                "gpen_ffhq_00004.png", "barbershop_ii2s_117.png", "diffpir_ffhq_69037.png",
                "diffpir_ffhq_69133.png", "diffpir_ffhq_69367.png"]


@pytest.fixture(scope="module")
def aligned_faces(det68):
    out = []
    for name in FFHQ_ALIGNED:
        img = photo(name, ALIGNED)
        out.append((name, img, det68.detect(img)))
    return out


@needs_dlib
@needs_shared
def test_realigning_ffhq_crops_is_nearly_identity(aligned_faces):
    errors = {}
    for name, img, faces in aligned_faces:
        assert len(faces) == 1, name
        errors[name] = corner_error_pct(F.align_matrix(faces[0].landmarks5, img.shape[0]), img.shape[0])
    assert np.median(list(errors.values())) < 1.5, errors
    assert max(errors.values()) < 3.0, errors


@needs_dlib
@needs_shared
def test_five_point_model_alignment(det5):
    errors = []
    for name in FFHQ_ALIGNED[:5] + FFHQ_ALIGNED[6:]:
        img = photo(name, ALIGNED)
        (face,) = det5.detect(img)
        assert face.landmarks68 is None
        errors.append(corner_error_pct(F.align_matrix(face.landmarks5, img.shape[0]), img.shape[0]))
    assert np.median(errors) < 4.0, errors


@needs_dlib
@needs_shared
def test_crop_sizes_agree(aligned_faces):
    name, img, (face,) = aligned_faces[1]
    big, a512 = F.align_face(img, face, 512)
    small, a64 = F.align_face(img, face, 64)
    assert np.allclose((a512[:, :2] / 8), a64[:, :2])
    assert psnr(cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA), small) > 30


# ------------------------------------------------------------------ paste-back
def weight_map(img, crop, a, **kw):
    """Where paste_back puts the face: 255 = fully restored face, 0 = untouched."""
    return F.paste_back(np.zeros_like(img), np.full_like(crop, 255), a, **kw)[..., 0]


@needs_dlib
@needs_shared
def test_paste_back_of_unchanged_crop_reproduces_photo(two_people):
    img, faces = two_people
    out = img
    touched = np.zeros(img.shape[:2], bool)
    inside = np.zeros(img.shape[:2], bool)
    for f in faces:
        crop, a = F.align_face(img, f, 512)
        out = F.paste_back(out, crop, a)
        touched |= weight_map(img, crop, a) > 0
        inside |= weight_map(img, crop, a) == 255
    assert psnr(out, img, inside) > 38
    assert np.abs(out.astype(int) - img).mean() < 1.0
    assert np.array_equal(out[~touched], img[~touched])                    # untouched outside the faces
    assert 0.05 < touched.mean() < 0.6


@needs_dlib
@needs_shared
def test_paste_back_catches_misregistration(two_people):
    img, faces = two_people
    crop, a = F.align_face(img, faces[0], 512)
    shifted = a.copy()
    shifted[:, 2] += 2 * a[:, 0]                                           # 2 image pixels to the side
    inside = weight_map(img, crop, a) == 255
    good, bad = psnr(F.paste_back(img, crop, a), img, inside), psnr(F.paste_back(img, crop, shifted), img, inside)
    assert good > bad + 6, (good, bad)


@needs_dlib
@needs_shared
def test_paste_back_upscaled_and_from_small_crop(two_people):
    img, faces = two_people
    up = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    crop, a = F.align_face(img, faces[0], 512)
    out = F.paste_back(img, crop, a, upscale=2, background=up)
    assert out.shape == up.shape
    inside = weight_map(img, crop, a, upscale=2) == 255
    assert psnr(out, up, inside) > 45                                      # ~53 dB; a 1/4 px slip gives ~37
    assert np.array_equal(F.paste_back(img, crop, a, upscale=2), F.paste_back(img, crop, a, upscale=2, background=up))
    small, a128 = F.align_face(img, faces[0], 128)                          # e.g. a 128 -> 512 SR model
    out = F.paste_back(img, cv2.resize(small, (512, 512), interpolation=cv2.INTER_CUBIC), a128, crop_size=128)
    assert psnr(out, img, weight_map(img, crop, a) == 255) > 28


@needs_dlib
@needs_shared
def test_no_seam_when_the_face_changes(two_people):
    """The blend weight must rise gradually (a hard seam jumps by 255 between neighbours),
    a red frame round the restored crop must vanish, and the face itself must change."""
    img, faces = two_people
    crop, a = F.align_face(img, faces[0], 512)
    w = weight_map(img, crop, a).astype(np.float64)
    assert np.abs(np.diff(w, axis=0)).max() < 20 and np.abs(np.diff(w, axis=1)).max() < 20
    fake = cv2.add(crop, np.full_like(crop, 40))
    cv2.rectangle(fake, (0, 0), (511, 511), (0, 0, 255), 8)
    delta = F.paste_back(img, fake, a).astype(np.float64) - img
    assert np.abs(delta[w == 0]).max() == 0
    assert np.median(delta[w == 255]) > 30


@needs_dlib
@needs_shared
def test_paste_onto_16bit_keeps_everything_else_exact(two_people):
    img, faces = two_people
    deep = img.astype(np.uint16) * 257 + 100                                # values 8 bits cannot hold
    crop, a = F.align_face(img, faces[0], 512)
    out = F.paste_back(deep, crop, a)
    w16 = F.paste_back(np.zeros_like(deep), np.full_like(crop, 255), a)[..., 0]    # weight at 16-bit precision
    assert out.dtype == np.uint16 and w16.max() == 65535
    assert np.array_equal(out[w16 == 0], deep[w16 == 0])
    assert np.abs(out[w16 == 65535].astype(int) - deep[w16 == 65535]).mean() < 2 * 257


def test_fill_outside_blurs_and_fades_what_the_photo_lacks():
    """A tight portrait: the FFHQ square reaches past the photo. The crop keeps the photo's
    pixels and fills the rest with no sharp mirrored copy (low gradient energy there)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)        # sharp texture everywhere
    lm = np.array([[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]], float)
    crop, a = F.align_face(img, fake_face((0, 0, 120, 120), lm), 128)
    mirrored, _ = F.align_face(img, fake_face((0, 0, 120, 120), lm), 128, inside=np.ones((120, 120), np.float32))
    inside = cv2.warpAffine(np.ones((120, 120), np.float32), a, (128, 128), borderValue=0)
    assert (inside < 0.5).mean() > 0.3                                 # the square does reach outside
    core = cv2.erode((inside > 0.99).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    far = cv2.distanceTransform((inside < 0.5).astype(np.uint8), cv2.DIST_L2, 5) > 0.15 * 128
    assert np.array_equal(crop[core], mirrored[core])                  # the photo itself is untouched
    grad = np.abs(np.diff(crop.astype(np.float32), axis=1)).mean(-1)
    assert grad[far[:, 1:]].mean() < 0.05 * grad[core[:, 1:]].mean()   # far outside: flat median colour
    assert np.abs(crop[far].astype(float) - np.median(img.reshape(-1, 3), 0)).max() < 40


@needs_shared
@needs_dlib
def test_training_script_and_restore_cut_the_same_crop(tmp_path):
    """One crop: scripts/align_faces.py (training data) and restore's Preparer give the same
    pixels for the same face of a tight portrait, the fill outside the photo included."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import align_faces
    from panini_cli import pipeline

    img = photo("facerec_obama_480p.jpg")
    face = F.DlibDetector("68", upsample=0).detect(img)[0]
    x0, y0, x1, y1 = (int(v) for v in face.box)
    tight = np.ascontiguousarray(img[max(0, y0 - 20):y1 + 20, max(0, x0 - 10):x1 + 10])  # face near every edge
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "tight.png"), tight)
    (tmp_path / "out").mkdir()
    assert align_faces._align_chunk([src / "tight.png"], tmp_path / "out", 64, 0.25) == []
    trained = cv2.imread(str(tmp_path / "out" / "tight.png"))
    prep = pipeline.Preparer(64, pipeline.FaceOptions(), lambda: F.DlibDetector("68", upsample=0, pad=0.25))
    item = prep(src / "tight.png", Path("tight.png"))
    assert item.error is None and len(item.faces) == 1
    assert np.array_equal(item.faces[0].crop, trained)
