"""Image <-> tensor conversion exactly as the official test pipeline does it.

In: uint8 BGR HxWx3 -> float32 /255 -> RGB -> (x - 0.5) * 2 -> 1x3xHxW in [-1, 1].
Out: (y + 1) / 2 -> clamp [0, 1] -> BGR -> round(x * 255) half-to-even -> uint8.
Following it bit for bit is what lets our PNGs match the official ones.
"""
from __future__ import annotations

import numpy as np
import torch


def bgr_to_tensor(images: np.ndarray | list[np.ndarray], device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 BGR (HxWx3 or a list of them, same size) -> float32 (B, 3, H, W) RGB in [-1, 1].

    With a CUDA `device` the uint8 pixels are copied (a quarter of the float bytes, from pinned
    memory) and converted there by the same float32 operations: the same bits (tests/test_cuda.py)."""
    batch = np.stack(images) if isinstance(images, list) else images[None]
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 BGR images of shape HxWx3, got {batch.dtype} {batch.shape[1:]}")
    if device is not None and torch.device(device).type == "cuda":
        u8 = torch.from_numpy(np.ascontiguousarray(batch)).pin_memory().to(device, non_blocking=True)
        return _normalise(u8)
    x = batch.astype(np.float32) / np.float32(255.0)
    x = (x[..., ::-1] - np.float32(0.5)) * np.float32(2.0)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _normalise(u8: torch.Tensor) -> torch.Tensor:
    """bgr_to_tensor's arithmetic in torch, on u8's device: (B, H, W, 3) uint8 -> (B, 3, H, W) float32.
    The divisor is a tensor: CUDA turns a division by a Python scalar into a product with its
    reciprocal, which is not always the correctly rounded quotient that NumPy computes."""
    x = u8.float() / torch.tensor(255.0, device=u8.device)
    return ((x.flip(-1) - 0.5) * 2.0).permute(0, 3, 1, 2).contiguous()


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """tensor_to_bgr's arithmetic in torch, on the tensor's device; one uint8 copy to the host."""
    x = ((images.detach().float() + 1) / 2).clamp_(0, 1)
    x = (x.flip(1) * 255.0).round_().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def tensor_to_bgr(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) RGB, nominally [-1, 1] -> list of uint8 BGR HxWx3 (the official tensor2img).

    A CUDA tensor is converted there and copied as uint8: the same bits, a quarter of the bytes,
    and none of the per-pixel work on the CPU thread that feeds the GPU."""
    if images.device.type == "cuda":
        return list(_to_uint8(images))
    x = ((images.detach().float().cpu() + 1) / 2).clamp_(0, 1)
    x = x.numpy()[:, ::-1].transpose(0, 2, 3, 1)
    return [np.ascontiguousarray((im * np.float32(255.0)).round().astype(np.uint8)) for im in x]
