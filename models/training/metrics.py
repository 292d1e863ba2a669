"""PSNR and SSIM on 8-bit images, as face-restoration papers compute them.

Protocol (the common one of mmedit/BasicSR, which the official Panini evaluation ran on):
- inputs are uint8 images of equal size, compared at 8 bits (what a saved PNG holds);
- `space="rgb"` (default): PSNR over all pixels and the three channels; SSIM per channel,
  then the mean of the three. `space="y"`: both on the BT.601 luma Y (16..235 scale,
  as MATLAB's rgb2ycbcr), which many SR papers report instead;
- PSNR = 10 log10(255^2 / MSE); identical images give inf;
- SSIM (Wang et al. 2004): Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, L 255,
  statistics in float64, 'valid' region only (the 5-px border where the window would
  leave the image is dropped), mean of the SSIM map. No border crop, no downsampling.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

SPACES = ("rgb", "y")


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype} and {b.dtype}")


def to_y(bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR -> float64 BT.601 luma on the 16..235 scale (MATLAB rgb2ycbcr's Y)."""
    x = bgr.astype(np.float64) / 255.0
    return 16.0 + x[..., 0] * 24.966 + x[..., 1] * 128.553 + x[..., 2] * 65.481


def _planes(img: np.ndarray, space: str) -> list[np.ndarray]:
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if space == "y":
        return [to_y(img) if img.ndim == 3 else img.astype(np.float64)]
    if img.ndim == 2:
        return [img.astype(np.float64)]
    return [img[..., c].astype(np.float64) for c in range(img.shape[2])]


def psnr(a: np.ndarray, b: np.ndarray, space: str = "rgb") -> float:
    _check(a, b)
    pa, pb = np.stack(_planes(a, space)), np.stack(_planes(b, space))
    mse = float(np.mean((pa - pb) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _window() -> np.ndarray:
    g = cv2.getGaussianKernel(11, 1.5)
    return g @ g.T


def ssim_plane(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two float64 planes on the 0..255 scale (valid region of the 11x11 window)."""
    if min(x.shape) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 px, got {x.shape}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    w = _window()

    def filt(img):
        return cv2.filter2D(img, -1, w, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx ** 2
    syy = filt(y * y) - my ** 2
    sxy = filt(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, space: str = "rgb") -> float:
    _check(a, b)
    return float(np.mean([ssim_plane(x, y) for x, y in zip(_planes(a, space), _planes(b, space))]))
