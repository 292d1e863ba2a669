"""Running a model for inference: device, memory format and precision in one place.

fp32 is the default and exact. `channels_last` is on by default on CPU: the
thin convolutions of the RRDB extractor at full input resolution run ~1.3x
faster in NHWC and the outputs stay within float32 rounding of NCHW. bf16 (CPU,
CUDA) and fp16 (CUDA) use autocast and are opt-in: they change the numbers
(see benchmarks/forward.py for how much).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(device: torch.device | str, precision: str) -> None:
    dev = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 needs a CUDA device; on CPU use bf16 or fp32")


def prepare(model: nn.Module, device: torch.device | str = "cpu", precision: str = "fp32",
            channels_last: bool = True, compile: bool = False) -> nn.Module:
    """Move to `device`, set eval mode and the memory format. Weights stay fp32 (autocast casts).

    compile=True wraps the module with torch.compile: it costs minutes of start-up
    on a CPU, so it is off by default and only pays for long jobs (video, big folders).
    """
    check_precision(device, precision)
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model, dynamic=False)
    return model


def autocast(device: torch.device | str, precision: str):
    """The autocast context for `precision` (a no-op for fp32)."""
    dev = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(dev.type, dtype=dtype)


def forward(model: nn.Module, x: torch.Tensor, precision: str = "fp32", **kwargs):
    """model(x, **kwargs) under inference mode and the precision's autocast; image outputs in fp32."""
    device = next(model.parameters()).device
    with torch.inference_mode(), autocast(device, precision):
        out = model(x.to(device), **kwargs)
    if isinstance(out, torch.Tensor):
        return out.float()
    out.image = out.image.float()
    return out
