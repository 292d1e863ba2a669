"""StyleGAN2's low-level ops, each fast version beside its plain reference.

The reference functions follow the textbook definitions (zero-insertion,
padding, a one-channel FIR correlation, decimation; grouped modulated
convolution) and exist to be read and to test the fast ones against
(`tests/test_ops.py`). The fast functions compute the same values with
depthwise convolutions, which on a CPU are 5-9x faster than the one-channel
FIR and use no padded zero-inserted copies.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def fir_kernel(taps=(1, 3, 3, 1), dtype=torch.float32) -> torch.Tensor:
    """The separable 2-D FIR kernel outer(taps, taps), normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float64)
    k = torch.outer(k, k)
    return (k / k.sum()).to(dtype)


# ----------------------------------------------------------------- bias + act
def bias_act(x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float = 0.2,
             gain: float = SQRT2, inplace: bool = False) -> torch.Tensor:
    """leaky_relu(x + bias, slope) * gain, bias broadcast over channels (dim 1).

    inplace=True overwrites x (for inference, where x is a fresh temporary): the
    same values with no new full-size buffers.
    """
    b = None if bias is None else bias.view(1, -1, *([1] * (x.ndim - 2)))
    if inplace:
        if b is not None:
            x.add_(b)
        return F.leaky_relu_(x, negative_slope).mul_(gain)
    if b is not None:
        x = x + b
    return F.leaky_relu(x, negative_slope) * gain


def can_overwrite(x: torch.Tensor) -> bool:
    """True when autograd will not need x: safe to update it in place."""
    return not (torch.is_grad_enabled() and x.requires_grad)


# ------------------------------------------------------------------ upfirdn2d
def _pads(pad) -> tuple[int, int]:
    return (pad, pad) if isinstance(pad, int) else (int(pad[0]), int(pad[1]))


def upfirdn2d_ref(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
                  pad=(0, 0)) -> torch.Tensor:
    """Reference: upsample by zero insertion, pad, FIR-filter, downsample.

    The same (pad0, pad1) applies to both axes; the kernel is flipped
    (true convolution), as in the original StyleGAN2 op.
    """
    p0, p1 = _pads(pad)
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    out = x.reshape(b * c, 1, h, 1, w, 1)
    out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1])
    out = out.reshape(b * c, 1, h * up, w * up)
    out = F.pad(out, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    out = out[:, :, max(-p0, 0): out.shape[2] - max(-p1, 0), max(-p0, 0): out.shape[3] - max(-p1, 0)]
    weight = torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).to(out.dtype)
    out = F.conv2d(out, weight)
    out = out[:, :, ::down, ::down]
    return out.reshape(b, c, out.shape[2], out.shape[3])


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad=(0, 0)) -> torch.Tensor:
    """Fast upfirdn2d: a depthwise (transposed) convolution, same values as the reference.

    Upsampling by `up` followed by the FIR equals a depthwise transposed
    convolution with stride `up` when pad1 == pad0 + 1 - up (the StyleGAN2
    ToRGB case); any other shape falls back to the reference.
    """
    p0, p1 = _pads(pad)
    c = x.shape[1]
    kh, kw = kernel.shape
    kernel = kernel.to(x.dtype)
    if up == 1 and p0 >= 0 and p1 >= 0:
        weight = torch.flip(kernel, [0, 1]).expand(c, 1, kh, kw)
        if p0 != p1:
            x = F.pad(x, [p0, p1, p0, p1])
            p0 = 0
        return F.conv2d(x, weight, stride=down, padding=p0, groups=c)
    ct_pad = kh - 1 - p0
    if down == 1 and kh == kw and ct_pad >= 0 and p1 == p0 + 1 - up:
        weight = kernel.expand(c, 1, kh, kw)
        return F.conv_transpose2d(x, weight, stride=up, padding=ct_pad, groups=c)
    return upfirdn2d_ref(x, kernel, up=up, down=down, pad=(p0, p1))


# ------------------------------------------------------- modulated convolution
def modulate_weight(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
                    eps: float = 1e-8) -> torch.Tensor:
    """Per-sample weights (B, out, in, k, k) = weight * style, optionally demodulated."""
    w = weight.unsqueeze(0) * styles.view(styles.shape[0], 1, -1, 1, 1)
    if demodulate:
        demod = torch.rsqrt(w.pow(2).sum([2, 3, 4]) + eps)
        w = w * demod.view(styles.shape[0], -1, 1, 1, 1)
    return w


def modulated_conv2d_ref(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                         demodulate: bool = True, up: bool = False,
                         blur_kernel: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Reference StyleGAN2 modulated convolution (grouped over the batch).

    weight: (out, in, k, k) already scaled for equalized lr; styles: (B, in).
    With `up`, a stride-2 transposed convolution followed by the FIR blur
    (kernel x4, pad (1, 1) for k=3 and a 4-tap kernel), as StyleGAN2 does.
    """
    b, c, h, wd = x.shape
    out_ch, _, kh, kw = weight.shape
    w = modulate_weight(weight, styles, demodulate, eps)
    xg = x.reshape(1, b * c, h, wd)
    if up:
        wt = w.transpose(1, 2).reshape(b * c, out_ch, kh, kw)
        y = F.conv_transpose2d(xg, wt, stride=2, padding=0, groups=b)
        y = y.reshape(b, out_ch, y.shape[2], y.shape[3])
        p = blur_kernel.shape[0] - 2 - (kh - 1)
        return upfirdn2d_ref(y, blur_kernel * 4, pad=((p + 1) // 2 + 1, p // 2 + 1))
    y = F.conv2d(xg, w.reshape(b * out_ch, c, kh, kw), padding=kh // 2, groups=b)
    return y.reshape(b, out_ch, h, wd)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     demodulate: bool = True, up: bool = False,
                     blur_kernel: torch.Tensor | None = None, eps: float = 1e-8,
                     fused: bool | None = None) -> torch.Tensor:
    """Fast modulated convolution: same values as `modulated_conv2d_ref`.

    fused=True folds the style into per-sample weights (one grouped conv);
    fused=False scales the input by the style, runs one shared-weight conv and
    scales the output by the demodulation factor, which keeps the batch as a
    batch (channels_last friendly). None picks per shape: the non-fused path
    for batches > 1 (the grouped conv cannot use channels_last there), the
    fused path at batch 1.
    """
    b, c, h, wd = x.shape
    out_ch, _, kh, kw = weight.shape
    if fused is None:
        fused = b == 1
    if fused:
        w = modulate_weight(weight, styles, demodulate, eps)
        if b == 1:
            w = w[0]
            xg = x
        else:
            xg = x.reshape(1, b * c, h, wd)
        if up:
            wt = w.transpose(-4, -3).reshape(b * c, out_ch, kh, kw)
            y = F.conv_transpose2d(xg, wt, stride=2, padding=0, groups=b)
        else:
            y = F.conv2d(xg, w.reshape(b * out_ch, c, kh, kw), padding=kh // 2, groups=b)
        if b > 1:
            # Not at batch 1: reshape would give the size-1 batch dim a stride that
            # hides the channels_last layout, and the next conv would copy to NCHW.
            y = y.reshape(b, out_ch, y.shape[2], y.shape[3])
    else:
        xs = x * styles.view(b, c, 1, 1).to(x.dtype)
        if up:
            y = F.conv_transpose2d(xs, weight.transpose(0, 1), stride=2, padding=0)
        else:
            y = F.conv2d(xs, weight, padding=kh // 2)
        if demodulate:
            # sum_{i,k} (w_oik s_i)^2 = (s^2) @ (sum_k w_oik^2)^T: no per-sample weights built
            demod = torch.rsqrt(styles.pow(2) @ weight.pow(2).sum([2, 3]).t() + eps)
            y = y * demod.view(b, out_ch, 1, 1).to(y.dtype)
    if up:
        p = blur_kernel.shape[0] - 2 - (kh - 1)
        y = upfirdn2d(y, blur_kernel * 4, pad=((p + 1) // 2 + 1, p // 2 + 1))
    return y
