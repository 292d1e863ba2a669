"""oneDNN fused convolutions for CPU inference: the elementwise work rides on the conv.

On a 2-core CPU the dense blocks of the 512 px RRDB spend a quarter of their
time in separate bias adds, partial-sum adds and activations over 32-channel
512x512 tensors (memory-bound passes). oneDNN can apply them as post-ops of the
convolution that produces the tensor, so they cost no extra pass over memory:

  conv_act(x, w, b, slope)  = leaky_relu(conv2d(x, w, b), slope)   (slope None: no act)
  conv_add_(acc, x, w)      = acc += conv2d(x, w)                  (in place)

Both are PyTorch's internal `mkldnn::_convolution_pointwise*` ops (the ones
torch.compile's CPU backend emits). They have no autograd and take float32 only,
so `usable(x, weight)` gates them: CPU, fp32, no autograd, no autocast, oneDNN built in.
Everything else (training, CUDA, bf16/fp16) takes the plain path, whose result
these equal within float32 rounding (tests/test_fused.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_ONE = [1, 1]


def conv_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
             slope: float | None = None) -> torch.Tensor:
    """leaky_relu(conv2d(x, weight, bias, padding=padding), slope); slope None: no activation."""
    pad = [padding, padding]
    if slope is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, pad, _ONE, _ONE, 1, "none", [], "")
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, pad, _ONE, _ONE, 1,
                                                    "leaky_relu", [slope], "")


def conv_add_(acc: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """acc += conv2d(x, weight, padding=padding), in place; returns acc."""
    pad = [padding, padding]
    return torch.ops.mkldnn._convolution_pointwise_.binary(acc, x, weight, None, pad, _ONE, _ONE, 1,
                                                           "add", None, None, [], None)


def _self_check() -> bool:
    """The internal ops exist in this torch build and still compute what we call them for.

    They are not public API (torch>=2.1 is allowed): a signature or behaviour change in
    another version turns the fused path off instead of breaking or changing a forward."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(1, 4, 5, 5, generator=g), torch.randn(8, 4, 3, 3, generator=g)
        b = torch.randn(8, generator=g)
        with torch.no_grad():
            ref = F.conv2d(x, w, b, padding=1)
            got = conv_act(x, w, b, 1, 0.2)
            ok = torch.allclose(got, F.leaky_relu(ref, 0.2), rtol=1e-4, atol=1e-4)
            acc = conv_act(x, w, b, 1)
            conv_add_(acc, x, w, 1)
            return ok and torch.allclose(acc, ref + ref - b.view(1, -1, 1, 1), rtol=1e-4, atol=1e-4)
    except (AttributeError, RuntimeError, TypeError):
        return False


AVAILABLE = _self_check()


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when the fused ops can compute this forward of `weight` on x (see module docstring)."""
    return (AVAILABLE and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"))
