"""Image <-> tensor conversion exactly as the official test pipeline does it.

In: uint8 BGR HxWx3 -> float32 /255 -> RGB -> (x - 0.5) * 2 -> 1x3xHxW in [-1, 1].
Out: (y + 1) / 2 -> clamp [0, 1] -> BGR -> round(x * 255) half-to-even -> uint8.
Following it bit for bit is what lets our PNGs match the official ones.
"""
from __future__ import annotations

import numpy as np
import torch


def bgr_to_tensor(images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """uint8 BGR (HxWx3 or a list of them, same size) -> float32 (B, 3, H, W) RGB in [-1, 1]."""
    batch = np.stack(images) if isinstance(images, list) else images[None]
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 BGR images of shape HxWx3, got {batch.dtype} {batch.shape[1:]}")
    x = batch.astype(np.float32) / np.float32(255.0)
    x = (x[..., ::-1] - np.float32(0.5)) * np.float32(2.0)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def tensor_to_bgr(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) RGB, nominally [-1, 1] -> list of uint8 BGR HxWx3 (the official tensor2img)."""
    x = ((images.detach().float().cpu() + 1) / 2).clamp_(0, 1)
    x = x.numpy()[:, ::-1].transpose(0, 2, 3, 1)
    return [np.ascontiguousarray((im * np.float32(255.0)).round().astype(np.uint8)) for im in x]
