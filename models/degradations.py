"""Synthetic degradation of Panini-Net's paper (Eq. 10), shared by every part of panini.

    X = JPEG_q( (Y * k_sigma) downsample_r  + N_delta )

Training, ``panini degrade``, ``inspect --sweep``, evaluation and the tests all call
this module, so one set of choices defines what "degraded" means everywhere.

Scale convention: ``sigma`` and ``r`` are defined for an image whose long side is
1024 px (the paper's HQ size). Any other input is treated as a scaled copy of that
image, so the same parameters remove the same detail from a face whether it arrives
at 1024, 512 or 256 px, and the 1024 px numbers of the paper keep their meaning.

Stages, in order (each skipped when it would be the identity):

1. **blur** -- isotropic Gaussian, applied at the input (HQ) resolution with std
   ``sigma * L / 1024`` px (L = long side). Kernel size ``2 * ceil(3 * std) + 1``
   (+-3 std, 99.7 % of the mass).
2. **down** -- area resize so the long side becomes ``round(1024 / r)`` px, i.e. by
   a factor ``r * L / 1024`` relative to the input (never upsampling: a 256-px input
   with r = 2 is left as is). r is tied to the HQ size, not to ``out_size``: with
   r = 200 a face keeps ~5 px whatever LQ size is asked for. Area interpolation
   models sensor integration and cannot alias.
3. **up** -- the paper's "symmetric upsampling", bilinear, but straight to the output
   size (``out_size`` or the input size) instead of back to HQ size and down again:
   one resize instead of two, and no extra smoothing. Bilinear has no overshoot, so
   no clipping is needed here.
4. **noise** -- i.i.d. Gaussian noise of std ``noise`` (0-255 scale) per pixel and
   channel, drawn from a numpy ``Generator``; added at the *output* resolution, then
   clipped and rounded to uint8.
5. **jpeg** -- OpenCV ``imencode``/``imdecode`` at quality ``jpeg`` (libjpeg defaults,
   4:2:0 chroma subsampling for colour, like most real JPEGs).

Noise and JPEG act on the output pixel grid on purpose: the network sees LQ images
at 512 px, so delta is the noise std it sees and the 8x8 JPEG blocks line up with
its input, as they would for a real photo cropped to 512. Resizing a degraded 1024
image down afterwards would cut the noise std in half and blur the blocks away.

Ranges (``DegradationRanges``, sampled uniformly): r in [10, 200], delta in [0, 25],
q in [5, 50] as in the paper. The paper gives no blur range; we use
**sigma in [0.2, 10] px at 1024 px** (i.e. [0.1, 5] at 512): the same numbers
GFPGAN-style pipelines use at 512 px, applied at 1024, i.e. half as strong relative
to the face. Reason: with r >= 10 the area downsampling alone already acts like a
box of std r / sqrt(12) >= 2.9 px, so blur only adds something when sigma is
comparable to it; up to 10 px it dominates for the smaller r, while a larger upper
bound would mostly stack on top of r = 100..200 images that are already ~5-10 px.
The lower bound 0.2 is a near-identity kernel, so blur-free images are covered.

No torch here: numpy + OpenCV only, so data-loader workers stay light.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Iterator, Sequence, Union

import cv2
import numpy as np

__all__ = [
    "REFERENCE_SIZE",
    "STAGES",
    "DEFAULT_RANGES",
    "DegradationParams",
    "DegradationRanges",
    "degrade",
    "degrade_random",
    "degrade_batch",
    "jpeg_roundtrip",
]

#: Long side (px) of the image ``sigma`` and ``r`` are expressed for; the paper's HQ size.
REFERENCE_SIZE = 1024

#: Stage names, in pipeline order, as used in the ``timings`` dict of :func:`degrade`.
STAGES = ("blur", "down", "up", "noise", "jpeg")

Seed = Union[int, np.random.SeedSequence]
RngLike = Union[np.random.Generator, int, None]


def _real(name: str, value: object, lo: float) -> float:
    """Return ``value`` as a finite float >= ``lo`` or raise a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo:g}, got {v:g}")
    return v


def _quality(name: str, value: object) -> int:
    """Return ``value`` as an int JPEG quality in 1..100 or raise a one-line ValueError."""
    v = _real(name, value, 1)
    if v != int(v) or v > 100:
        raise ValueError(f"{name} (JPEG quality) must be an integer in 1..100, got {value!r}")
    return int(v)


@dataclass(frozen=True)
class DegradationParams:
    """One draw of Eq. 10's parameters; everything needed to redo a degradation.

    sigma: blur std in px of a 1024-px image (>= 0; 0 = no blur).
    r:     downsampling factor of a 1024-px image (>= 1; 1 = none).
    noise: Gaussian noise std on the 0-255 scale (>= 0).
    jpeg:  JPEG quality, integer 1..100.
    """

    sigma: float
    r: float
    noise: float
    jpeg: int

    def __post_init__(self) -> None:
        # Coerce numpy scalars to plain Python types so to_dict() is JSON-ready.
        object.__setattr__(self, "sigma", _real("sigma", self.sigma, 0))
        object.__setattr__(self, "r", _real("r", self.r, 1))
        object.__setattr__(self, "noise", _real("noise", self.noise, 0))
        object.__setattr__(self, "jpeg", _quality("jpeg", self.jpeg))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DegradationParams":
        """Build from ``to_dict()`` output; unknown or missing keys are errors, not guesses."""
        names = {f.name for f in fields(cls)}
        extra, missing = set(d) - names, names - set(d)
        if extra or missing:
            raise ValueError(
                f"DegradationParams keys: missing {sorted(missing)}, unknown {sorted(extra)}"
            )
        return cls(**d)


@dataclass(frozen=True)
class DegradationRanges:
    """Closed intervals the sampler draws from uniformly (jpeg: integers, both ends included).

    Defaults are the paper's r, delta, q ranges plus our blur range (see module docstring).
    A degenerate interval (lo == hi) fixes that parameter.
    """

    sigma: tuple[float, float] = (0.2, 10.0)
    r: tuple[float, float] = (10.0, 200.0)
    noise: tuple[float, float] = (0.0, 25.0)
    jpeg: tuple[int, int] = (5, 50)

    def __post_init__(self) -> None:
        for name, lo_bound in (("sigma", 0), ("r", 1), ("noise", 0), ("jpeg", 1)):
            pair = getattr(self, name)
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"{name} range must be a (lo, hi) pair, got {pair!r}")
            if name == "jpeg":
                lo, hi = _quality("jpeg range lo", pair[0]), _quality("jpeg range hi", pair[1])
            else:
                lo = _real(f"{name} range lo", pair[0], lo_bound)
                hi = _real(f"{name} range hi", pair[1], lo_bound)
            if lo > hi:
                raise ValueError(f"{name} range must have lo <= hi, got ({lo:g}, {hi:g})")
            object.__setattr__(self, name, (lo, hi))

    def sample(self, rng: np.random.Generator) -> DegradationParams:
        """Draw every parameter, always in the same order (sigma, r, noise, jpeg)."""
        return DegradationParams(
            sigma=float(rng.uniform(*self.sigma)),
            r=float(rng.uniform(*self.r)),
            noise=float(rng.uniform(*self.noise)),
            jpeg=int(rng.integers(self.jpeg[0], self.jpeg[1] + 1)),
        )

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "DegradationRanges":
        """Missing keys keep their defaults (configs name only what they change)."""
        names = {f.name for f in fields(cls)}
        if set(d) - names:
            raise ValueError(f"DegradationRanges: unknown keys {sorted(set(d) - names)}")
        return cls(**{k: tuple(v) for k, v in d.items()})


DEFAULT_RANGES = DegradationRanges()


def jpeg_roundtrip(img: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
    """Encode to JPEG at ``quality`` and decode; returns (decoded image, encoded bytes)."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV failed to JPEG-encode an image of shape {img.shape}")
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), int(buf.size)


def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 numpy array, got {getattr(img, 'dtype', type(img))}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise ValueError(f"image must be HxW grey or HxWx3 BGR, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image is empty, shape {img.shape}")


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


@contextmanager
def _timed(timings: dict | None, stage: str) -> Iterator[None]:
    if timings is None:
        yield
        return
    t0 = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0


def degrade(
    hq: np.ndarray,
    params: DegradationParams,
    out_size: int | None = None,
    rng: RngLike = None,
    *,
    timings: dict | None = None,
) -> np.ndarray:
    """Apply Eq. 10 with fixed ``params``; returns uint8 of the same layout as ``hq``.

    hq:       uint8 HxWx3 BGR or HxW grey (HxWx1 is kept as HxWx1).
    out_size: side of the square output (input must be square), or None for the input size.
    rng:      Generator or seed for the noise; None means seed 0, so a call is always
              reproducible (pass distinct seeds to get distinct noise).
    timings:  if a dict, seconds spent per stage (see ``STAGES``) are added to it.
    """
    _check_image(hq)
    if not isinstance(params, DegradationParams):
        raise ValueError(f"params must be DegradationParams, got {type(params).__name__}")
    h, w = hq.shape[:2]
    if out_size is not None:
        if isinstance(out_size, bool) or not isinstance(out_size, (int, np.integer)) or out_size < 1:
            raise ValueError(f"out_size must be a positive integer or None, got {out_size!r}")
        if h != w:
            raise ValueError(f"out_size needs a square input to avoid distortion, got {w}x{h}")
    keep_axis = hq.ndim == 3 and hq.shape[2] == 1
    img = hq[:, :, 0] if keep_axis else hq
    out_wh = (int(out_size), int(out_size)) if out_size is not None else (w, h)

    scale = max(h, w) / REFERENCE_SIZE  # input px per px of the 1024 reference
    with _timed(timings, "blur"):
        sigma_px = params.sigma * scale
        if sigma_px > 0:
            k = 2 * math.ceil(3 * sigma_px) + 1
            img = cv2.GaussianBlur(img, (k, k), sigmaX=sigma_px, sigmaY=sigma_px,
                                   borderType=cv2.BORDER_REFLECT_101)
    with _timed(timings, "down"):
        factor = max(1.0, params.r * scale)
        mid_wh = (max(1, round(w / factor)), max(1, round(h / factor)))
        if mid_wh != (w, h):
            img = cv2.resize(img, mid_wh, interpolation=cv2.INTER_AREA)
    with _timed(timings, "up"):
        if out_wh != mid_wh:
            enlarge = out_wh[0] * out_wh[1] > mid_wh[0] * mid_wh[1]
            img = cv2.resize(img, out_wh, interpolation=cv2.INTER_LINEAR if enlarge else cv2.INTER_AREA)
    with _timed(timings, "noise"):
        if params.noise > 0:
            gen = _as_rng(rng)
            noisy = gen.standard_normal(img.shape, dtype=np.float32)
            noisy *= np.float32(params.noise)
            noisy += img
            np.clip(noisy, 0, 255, out=noisy)
            img = np.rint(noisy).astype(np.uint8)
    with _timed(timings, "jpeg"):
        img, _ = jpeg_roundtrip(np.ascontiguousarray(img), params.jpeg)
    return img[:, :, None] if keep_axis else img


def degrade_random(
    hq: np.ndarray,
    seed: Seed,
    ranges: DegradationRanges = DEFAULT_RANGES,
    out_size: int | None = None,
) -> tuple[np.ndarray, DegradationParams]:
    """Draw params from ``default_rng(seed)`` then degrade, the noise continuing the same
    stream; (image, seed, ranges, out_size) fully determine the output bytes."""
    rng = np.random.default_rng(seed)
    params = ranges.sample(rng)
    return degrade(hq, params, out_size=out_size, rng=rng), params


ImageOrPath = Union[np.ndarray, str, os.PathLike]


def _load(item: ImageOrPath) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    img = cv2.imread(os.fspath(item), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image: {item}")
    return img


def _batch_item(item, seed, ranges, out_size, params, one_thread):
    if one_thread:  # n_jobs processes x OpenCV's own threads would oversubscribe the CPU
        cv2.setNumThreads(1)
    img = _load(item)
    if params is None:
        return degrade_random(img, seed, ranges, out_size)
    return degrade(img, params, out_size=out_size, rng=np.random.default_rng(seed)), params


def degrade_batch(
    images_or_paths: Sequence[ImageOrPath],
    seeds: Sequence[Seed],
    ranges: DegradationRanges = DEFAULT_RANGES,
    out_size: int | None = None,
    n_jobs: int = 1,
    params: DegradationParams | Sequence[DegradationParams] | None = None,
) -> list[tuple[np.ndarray, DegradationParams]]:
    """Degrade many images, one seed each, in joblib worker processes.

    Paths are read (BGR) inside the workers, so only file names are sent to them.
    With ``params`` (one for all, or one per image) the seeds only drive the noise;
    otherwise each item is ``degrade_random(img, seed, ranges, out_size)``. Results are
    identical for any ``n_jobs``.
    """
    items, seeds = list(images_or_paths), list(seeds)
    if len(items) != len(seeds):
        raise ValueError(f"seeds must match images one to one: {len(seeds)} seeds, {len(items)} images")
    if params is None or isinstance(params, DegradationParams):
        per_item = [params] * len(items)
    else:
        per_item = list(params)
        if len(per_item) != len(items):
            raise ValueError(f"params must match images one to one: {len(per_item)} vs {len(items)}")
    if n_jobs == 1:
        return [_batch_item(i, s, ranges, out_size, p, False) for i, s, p in zip(items, seeds, per_item)]
    from joblib import Parallel, delayed  # imported lazily: only batch callers pay for it

    return Parallel(n_jobs=n_jobs, prefer="processes")(
        delayed(_batch_item)(i, s, ranges, out_size, p, True) for i, s, p in zip(items, seeds, per_item)
    )
