"""Each parameter of Eq. 10 must have the measurable effect it claims, reproducibly.

Synthetic images keep most tests independent of ../shared; real faces (skipped when
the shared data is missing) check the same effects on the images we actually train on.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from panini_models.degradations import (
    DegradationParams,
    DegradationRanges,
    degrade,
    degrade_batch,
    degrade_random,
    jpeg_roundtrip,
)

SHARED = Path(os.environ.get("PANINI_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
FACES = SHARED / "data" / "faces_aligned"
# Luma weights (B, G, R). Luma is untouched by JPEG's 4:2:0 chroma subsampling, so
# i.i.d. per-channel noise of std d shows up in it with variance sum(w^2) * d^2.
LUMA = np.array([0.114, 0.587, 0.299])
CLEAN = dict(sigma=0.0, r=1.0, noise=0.0, jpeg=100)  # as close to identity as Eq. 10 gets


def P(**kw) -> DegradationParams:
    return DegradationParams(**{**CLEAN, **kw})


# ---------------------------------------------------------------- images and metrics
def synthetic(size: int = 256, seed: int = 0) -> np.ndarray:
    """Face-sized test card: smooth shading, hard edges and fine random texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    shade = 128 + 35 * np.sin(2 * np.pi * (1.3 * x + 0.6 * y))
    texture = cv2.GaussianBlur(rng.standard_normal((size, size)), (0, 0), 0.8) * 40
    img = np.stack([shade * g + texture for g in (0.8, 1.0, 1.15)], axis=-1)
    c = size // 2
    cv2.ellipse(img, (c, c), (size // 4, size // 3), 0, 0, 360, (60, 90, 150), 3)
    cv2.circle(img, (c - size // 8, c - size // 10), size // 20, (30, 30, 30), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def smooth(size: int = 256) -> np.ndarray:
    """Mid-range gradient, far from 0 and 255 so noise is never clipped."""
    y, x = np.mgrid[0:size, 0:size] / size
    g = 100 + 50 * x + 20 * y
    return np.clip(np.stack([g, g + 5, g - 5], axis=-1), 0, 255).astype(np.uint8)


def grey(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ LUMA if img.ndim == 3 else img.astype(np.float64)


def laplacian_var(img: np.ndarray) -> float:
    return float(cv2.Laplacian(grey(img), cv2.CV_64F).var())


def gradient_energy(img: np.ndarray) -> float:
    """Mean squared neighbour difference. Used for r instead of the Laplacian because
    bilinear upsampling puts kinks on its grid that inflate second derivatives."""
    g = grey(img)
    return float((np.diff(g, axis=0) ** 2).mean() + (np.diff(g, axis=1) ** 2).mean())


def blockiness(img: np.ndarray) -> float:
    """Mean |step| across 8-px block borders over mean |step| inside blocks (1 = none)."""
    g = grey(img)
    dh, dv = np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0))
    bh, bv = np.arange(dh.shape[1]) % 8 == 7, np.arange(dv.shape[0]) % 8 == 7
    return float((dh[:, bh].mean() + dv[bv].mean()) / (dh[:, ~bh].mean() + dv[~bv].mean()))


def strictly_decreasing(xs) -> bool:
    return all(a > b for a, b in zip(xs, xs[1:]))


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """One 1024-px HQ face (FFHQ/CelebA-HQ style)."""
    paths = sorted(FACES.glob("*.png")) if FACES.is_dir() else []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None and img.shape[:2] == (1024, 1024):
            return img
    pytest.skip(f"../shared/data not found: no 1024-px face in {FACES}")


# ---------------------------------------------------------------- blur
def test_blur_lowers_laplacian_monotonically_synthetic():
    img = synthetic(256)
    sigmas = [0, 2, 4, 8, 16, 32]  # px at 1024; 0.5..8 px at 256
    v = [laplacian_var(degrade(img, P(sigma=s))) for s in sigmas]
    assert strictly_decreasing(v), v


def test_blur_lowers_laplacian_monotonically_face(face):
    v = [laplacian_var(degrade(face, P(sigma=s), out_size=512)) for s in (0, 1, 2.5, 5, 10)]
    assert strictly_decreasing(v), v


def test_sigma_and_r_are_relative_to_image_size(face):
    """The same params on a 1024 face and on its 512 copy must look alike; an unscaled
    sigma (or an r tied to out_size) would make them differ like doubled params do."""
    half = cv2.resize(face, (512, 512), interpolation=cv2.INTER_AREA)
    p = P(sigma=6, r=12)
    a, b = degrade(face, p, out_size=512).astype(float), degrade(half, p).astype(float)
    same = np.abs(a - b).mean()
    sigma2 = np.abs(a - degrade(half, P(sigma=12, r=12))).mean()
    r2 = np.abs(a - degrade(half, P(sigma=6, r=24))).mean()
    assert same < 0.5 * min(sigma2, r2), (same, sigma2, r2)


def test_same_params_same_look_at_any_input_size_synthetic():
    """Shared-free version of the check above, 512 vs 256 px."""
    big = synthetic(512)
    small = cv2.resize(big, (256, 256), interpolation=cv2.INTER_AREA)
    a = degrade(big, P(sigma=16, r=24), out_size=256).astype(float)
    same = np.abs(a - degrade(small, P(sigma=16, r=24))).mean()
    sigma2 = np.abs(a - degrade(small, P(sigma=32, r=24))).mean()
    r2 = np.abs(a - degrade(small, P(sigma=16, r=48))).mean()
    assert same < 0.5 * min(sigma2, r2), (same, sigma2, r2)


# ---------------------------------------------------------------- downsampling r
def test_downsampling_averages_instead_of_aliasing():
    """1-px lines every 4 px must shrink to their mean grey (50), not to a moire."""
    stripes = np.zeros((256, 256), np.uint8)
    stripes[:, ::4] = 200
    out = degrade(stripes, P(r=32)).astype(float)  # 8x whole-pixel area cells
    assert np.abs(out - 50).max() <= 2, (out.min(), out.max())

def test_r_lowers_resolution_synthetic():
    img = synthetic(256)  # a 256-px image is a 1024-px one seen at 1/4: r = 4 keeps it whole
    assert degrade(img, P(r=4)).tobytes() == degrade(img, P()).tobytes()
    e = [gradient_energy(degrade(img, P(r=r))) for r in (4, 6, 8, 16, 32, 64, 128)]
    assert strictly_decreasing(e), e


def test_r_lowers_resolution_face_paper_range(face):
    outs = [degrade(face, P(r=r), out_size=512) for r in (10, 25, 50, 100, 200)]
    assert all(o.shape == (512, 512, 3) for o in outs)
    e = [gradient_energy(o) for o in outs]
    assert strictly_decreasing(e), e


# ---------------------------------------------------------------- noise
@pytest.mark.parametrize("delta", [2, 5, 10, 25])
def test_noise_adds_delta_squared_variance_grey(delta):
    flat = np.full((256, 256), 128, np.uint8)
    out = degrade(flat, P(noise=delta), rng=7)
    assert out.shape == flat.shape
    var = (out.astype(float) - 128).var()
    assert var == pytest.approx(delta**2, rel=0.1)


@pytest.mark.parametrize("delta", [5, 15, 25])
def test_noise_adds_delta_squared_variance_colour(delta):
    img = smooth()
    residual = grey(degrade(img, P(noise=delta), rng=3)) - grey(degrade(img, P()))
    assert residual.var() == pytest.approx((LUMA**2).sum() * delta**2, rel=0.12)


@pytest.mark.parametrize("level", [0, 255])
def test_noise_clips_instead_of_wrapping(level):
    """At black/white the noise is clipped: the mean shifts by a half-normal's mean,
    delta / sqrt(2 pi); uint8 wrap-around would put half the pixels at the far end."""
    delta = 20
    out = degrade(np.full((256, 256), level, np.uint8), P(noise=delta), rng=5).astype(float)
    assert np.abs(out - level).mean() == pytest.approx(delta / np.sqrt(2 * np.pi), rel=0.1)


def test_noise_variance_on_face(face):
    """Same check on a real face, ignoring pixels where clipping at 0/255 could bite."""
    clean = degrade(face, P(), out_size=512)
    for delta in (5, 20):
        noisy = degrade(face, P(noise=delta), out_size=512, rng=11)
        ok = np.all((clean > 3 * delta) & (clean < 255 - 3 * delta), axis=-1)
        residual = (grey(noisy) - grey(clean))[ok]
        assert ok.sum() > 20_000  # enough pixels for a ~1 % variance estimate
        assert residual.var() == pytest.approx((LUMA**2).sum() * delta**2, rel=0.15)


# ---------------------------------------------------------------- JPEG
QUALITIES = (5, 10, 20, 50, 95)


def test_jpeg_file_size_grows_with_quality():
    sizes = [jpeg_roundtrip(synthetic(256), q)[1] for q in QUALITIES]
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes


@pytest.mark.parametrize("source", ["synthetic", "face"])
def test_jpeg_blockiness_falls_with_quality(source, request):
    img = request.getfixturevalue("face") if source == "face" else synthetic(512)
    size = 512
    b = [blockiness(degrade(img, P(jpeg=q), out_size=size)) for q in QUALITIES]
    assert strictly_decreasing(b), b
    clean = blockiness(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
    assert b[0] > 1.5 * clean and b[-1] < 1.1 * clean, (b, clean)


def test_jpeg_applied_after_noise_on_output_grid(face):
    """Blocks must align with the 512-px output grid even with all stages active."""
    heavy = degrade(face, P(sigma=3, r=20, noise=10, jpeg=5), out_size=512, rng=0)
    light = degrade(face, P(sigma=3, r=20, noise=10, jpeg=50), out_size=512, rng=0)
    assert blockiness(heavy) > blockiness(light)


# ---------------------------------------------------------------- seeds
def test_same_seed_same_bytes_different_seed_differs():
    img = synthetic(128)
    a, pa = degrade_random(img, 123)
    b, pb = degrade_random(img, 123)
    c, pc = degrade_random(img, 124)
    assert pa == pb and a.tobytes() == b.tobytes()
    assert pa != pc and a.tobytes() != c.tobytes()


def test_rng_only_drives_noise():
    img = synthetic(128)
    noisy = P(sigma=4, r=3, noise=8, jpeg=40)
    assert degrade(img, noisy, rng=1).tobytes() == degrade(img, noisy, rng=1).tobytes()
    assert degrade(img, noisy, rng=1).tobytes() != degrade(img, noisy, rng=2).tobytes()
    quiet = P(sigma=4, r=3, noise=0, jpeg=40)
    assert degrade(img, quiet, rng=1).tobytes() == degrade(img, quiet, rng=2).tobytes()


def test_returned_params_reproduce_the_image():
    """With noise fixed at 0 the params are the whole story: nothing drawn is hidden."""
    img = synthetic(128)
    ranges = DegradationRanges(sigma=(0.2, 40), r=(1, 8), noise=(0, 0), jpeg=(5, 95))
    for seed in range(5):
        lq, params = degrade_random(img, seed, ranges, out_size=96)
        assert lq.shape == (96, 96, 3)
        assert degrade(img, params, out_size=96).tobytes() == lq.tobytes()


def test_batch_matches_single_and_is_worker_independent(tmp_path):
    imgs = [synthetic(64, seed=i) for i in range(4)]
    paths = []
    for i, im in enumerate(imgs):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), im)
    seeds = [10, 11, 12, 13]
    serial = degrade_batch(paths, seeds, out_size=32, n_jobs=1)
    parallel = degrade_batch(imgs, seeds, out_size=32, n_jobs=2)
    for (a, pa), (b, pb), im, s in zip(serial, parallel, imgs, seeds):
        ref, pr = degrade_random(im, s, out_size=32)
        assert pa == pb == pr
        assert a.tobytes() == b.tobytes() == ref.tobytes()
    fixed = degrade_batch(imgs[:2], [0, 1], params=P(noise=5, jpeg=30))
    assert all(p == P(noise=5, jpeg=30) for _, p in fixed)
    assert fixed[0][0].tobytes() == degrade(imgs[0], P(noise=5, jpeg=30), rng=0).tobytes()


# ---------------------------------------------------------------- sampler
def test_sampler_stays_in_range_and_covers_it():
    ranges = DegradationRanges()
    rng = np.random.default_rng(0)
    draws = [ranges.sample(rng) for _ in range(2000)]
    for name in ("sigma", "r", "noise", "jpeg"):
        lo, hi = getattr(ranges, name)
        vals = np.array([getattr(d, name) for d in draws])
        assert vals.min() >= lo and vals.max() <= hi, name
        assert vals.min() < lo + 0.05 * (hi - lo) and vals.max() > hi - 0.05 * (hi - lo), name
    q = {d.jpeg for d in draws}
    assert ranges.jpeg[0] in q and ranges.jpeg[1] in q and all(isinstance(v, int) for v in q)
    assert set(draws[0].to_dict()) == {"sigma", "r", "noise", "jpeg"}


def test_degenerate_range_fixes_parameter():
    ranges = DegradationRanges(sigma=(2, 2), r=(10, 200), noise=(7, 7), jpeg=(30, 30))
    rng = np.random.default_rng(1)
    for _ in range(20):
        p = ranges.sample(rng)
        assert (p.sigma, p.noise, p.jpeg) == (2, 7, 30)


def test_params_and_ranges_round_trip_through_json():
    p = DegradationParams(sigma=np.float32(1.5), r=np.int64(20), noise=3, jpeg=np.int64(40))
    d = json.loads(json.dumps(p.to_dict()))
    assert DegradationParams.from_dict(d) == p
    r = DegradationRanges(sigma=(1, 3))
    assert DegradationRanges.from_dict(json.loads(json.dumps(r.to_dict()))) == r


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(sigma=-0.1), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(r=0.5), "r"),
        (dict(r=float("inf")), "r"),
        (dict(noise=-1), "noise"),
        (dict(noise=float("nan")), "noise"),
        (dict(jpeg=0), "jpeg"),
        (dict(jpeg=101), "jpeg"),
        (dict(jpeg=30.5), "jpeg"),
        (dict(jpeg="high"), "jpeg"),
        (dict(sigma=True), "sigma"),
    ],
)
def test_bad_params_raise_naming_the_parameter(kw, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        P(**kw)


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(sigma=(3, 1)), "sigma"),
        (dict(r=(0.5, 10)), "r"),
        (dict(noise=(-1, 5)), "noise"),
        (dict(jpeg=(0, 50)), "jpeg"),
        (dict(jpeg=(5, 101)), "jpeg"),
        (dict(noise=5), "noise"),
    ],
)
def test_bad_ranges_raise_naming_the_parameter(kw, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        DegradationRanges(**kw)


def test_from_dict_rejects_missing_and_unknown_keys():
    with pytest.raises(ValueError, match="missing.*'jpeg'"):
        DegradationParams.from_dict(dict(sigma=1, r=2, noise=0))
    with pytest.raises(ValueError, match="unknown.*'blur'"):
        DegradationParams.from_dict(dict(sigma=1, r=2, noise=0, jpeg=50, blur=1))


def test_bad_images_and_sizes_raise():
    with pytest.raises(ValueError, match="uint8"):
        degrade(np.zeros((8, 8, 3), np.float32), P())
    with pytest.raises(ValueError, match="shape"):
        degrade(np.zeros((8, 8, 4), np.uint8), P())
    with pytest.raises(ValueError, match="out_size"):
        degrade(np.zeros((8, 8, 3), np.uint8), P(), out_size=0)
    with pytest.raises(ValueError, match="square"):
        degrade(np.zeros((8, 12, 3), np.uint8), P(), out_size=8)
    with pytest.raises(ValueError, match="seeds"):
        degrade_batch([np.zeros((8, 8, 3), np.uint8)], [1, 2])


def test_layouts_are_preserved():
    img = synthetic(64)
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert degrade(g, P(noise=3, jpeg=20), out_size=48).shape == (48, 48)
    assert degrade(g[:, :, None], P(r=4)).shape == (64, 64, 1)
    out = degrade(img[:, :40], P(r=200, sigma=50))  # non-square, tiny intermediate
    assert out.shape == (64, 40, 3) and out.dtype == np.uint8
