"""StyleGAN2 config-f: mapping network, synthesis network, discriminator.

Any power-of-two size from 64 to 1024. Channels per resolution are
min(channel_max, channel_base // res); config-f is channel_base=32768,
channel_max=512 (512 up to 64 px, then 256, 128, 64, 32). Smaller budgets give
models that train on a CPU.

Weights are stored raw and scaled at run time (equalized learning rate):
runtime weight = stored * gain / sqrt(fan_in) * lr_mul, as in the official
implementations, so checkpoints of those layouts load without rescaling.

The synthesis loop takes an optional `fuse(k, x)` callback applied to the
feature that enters the k-th upsampling block: that is where Panini-Net's DAFI
blocks sit (see panini.py).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import SQRT2, bias_act, can_overwrite, fir_kernel, modulated_conv2d, upfirdn2d


def stylegan_channels(size: int, channel_base: int = 32768, channel_max: int = 512) -> dict[int, int]:
    """Channels per resolution 4..size."""
    return {2 ** i: min(channel_max, channel_base // 2 ** i) for i in range(2, int(math.log2(size)) + 1)}


def _check_size(size: int) -> int:
    log = math.log2(size)
    if size < 4 or log != int(log):
        raise ValueError(f"size must be a power of two, got {size}")
    return int(log)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate; optional fused bias + leaky ReLU."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            return bias_act(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale) + self.bias * self.lr_mul


class MappingNetwork(nn.Module):
    """z -> w: pixel norm, then n_mlp equalized linears with lr_mul 0.01."""

    def __init__(self, style_dim: int = 512, n_mlp: int = 8, lr_mul: float = 0.01):
        super().__init__()
        self.layers = nn.ModuleList(
            [EqualLinear(style_dim, style_dim, lr_mul=lr_mul, activation=True) for _ in range(n_mlp)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        for layer in self.layers:
            x = layer(x)
        return x


class ModulatedConv(nn.Module):
    """Modulated (and by default demodulated) conv; `up` for the 2x transposed conv + blur."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size * kernel_size)
        self.affine = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.demodulate = demodulate
        self.up = up
        self.register_buffer("blur_kernel", fir_kernel() if up else None, persistent=False)
        self.fused: bool | None = None   # None: chosen per call by ops.modulated_conv2d

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)
        return modulated_conv2d(x, self.weight * self.scale, styles, self.demodulate, self.up,
                                self.blur_kernel, fused=self.fused)


class StyledConv(nn.Module):
    """Modulated conv, noise injection, bias + leaky ReLU (gain sqrt 2)."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, up: bool = False):
        super().__init__()
        self.conv = ModulatedConv(in_ch, out_ch, 3, style_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        x = self.conv(x, w)
        inplace = can_overwrite(x)
        if noise is not None:
            x = x.add_(self.noise_strength * noise) if inplace else x + self.noise_strength * noise
        return bias_act(x, self.bias, inplace=inplace)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) plus the upsampled skip image."""

    def __init__(self, in_ch: int, style_dim: int, upsample_skip: bool = True):
        super().__init__()
        self.conv = ModulatedConv(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))
        self.register_buffer("up_kernel", fir_kernel() * 4 if upsample_skip else None, persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, w)
        if can_overwrite(out):
            out.add_(self.bias.view(1, 3, 1, 1))
            return out if skip is None else out.add_(upfirdn2d(skip, self.up_kernel, up=2, pad=(2, 1)))
        out = out + self.bias.view(1, 3, 1, 1)
        return out if skip is None else out + upfirdn2d(skip, self.up_kernel, up=2, pad=(2, 1))


class StyleGAN2Generator(nn.Module):
    """Mapping + synthesis. `synthesis(w_plus)` takes (B, num_latents, style_dim)."""

    def __init__(self, size: int = 1024, style_dim: int = 512, n_mlp: int = 8,
                 channel_base: int = 32768, channel_max: int = 512):
        super().__init__()
        log = _check_size(size)
        self.size, self.style_dim = size, style_dim
        self.channels = stylegan_channels(size, channel_base, channel_max)
        self.num_latents = 2 * log - 2
        ch = self.channels
        self.mapping = MappingNetwork(style_dim, n_mlp)
        self.const = nn.Parameter(torch.randn(1, ch[4], 4, 4))
        self.conv1 = StyledConv(ch[4], ch[4], style_dim)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample_skip=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for i in range(3, log + 1):
            res = 2 ** i
            self.convs.append(StyledConv(ch[res // 2], ch[res], style_dim, up=True))
            self.convs.append(StyledConv(ch[res], ch[res], style_dim))
            self.to_rgbs.append(ToRGB(ch[res], style_dim))
        # Fixed noise, used when noise_mode="const" (deterministic inference).
        for idx in range(2 * log - 3):
            res = 2 ** ((idx + 5) // 2)
            self.register_buffer(f"noise_{idx}", torch.randn(1, 1, res, res))
        self.num_noises = 2 * log - 3

    def make_noises(self, batch: int, mode: str, like: torch.Tensor) -> list[torch.Tensor | None]:
        if mode == "const":
            return [getattr(self, f"noise_{i}").to(like.dtype) for i in range(self.num_noises)]
        if mode == "random":
            return [torch.randn(batch, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), device=like.device,
                                dtype=like.dtype) for i in range(self.num_noises)]
        if mode == "none":
            return [None] * self.num_noises
        raise ValueError(f"noise_mode must be const, random or none, got {mode!r}")

    def synthesis(self, w: torch.Tensor, noise_mode: str = "const",
                  fuse: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """w: (B, num_latents, style_dim). `fuse(k, x)` rewrites the input of upsampling block k."""
        if w.ndim != 3 or w.shape[1] != self.num_latents:
            raise ValueError(f"w must be (B, {self.num_latents}, {self.style_dim}), got {tuple(w.shape)}")
        noise = self.make_noises(w.shape[0], noise_mode, self.const)
        x = self.const.expand(w.shape[0], -1, -1, -1)
        x = self.conv1(x, w[:, 0], noise[0])
        skip = self.to_rgb1(x, w[:, 1])
        for k, to_rgb in enumerate(self.to_rgbs):
            if fuse is not None:
                x = fuse(k, x)
            x = self.convs[2 * k](x, w[:, 2 * k + 1], noise[2 * k + 1])
            x = self.convs[2 * k + 1](x, w[:, 2 * k + 2], noise[2 * k + 2])
            skip = to_rgb(x, w[:, 2 * k + 3], skip)
        return skip

    def forward(self, z: torch.Tensor, truncation: float = 1.0, w_avg: torch.Tensor | None = None,
                noise_mode: str = "random") -> torch.Tensor:
        w = self.mapping(z)
        if truncation != 1.0 and w_avg is not None:
            w = w_avg + truncation * (w - w_avg)
        return self.synthesis(w.unsqueeze(1).expand(-1, self.num_latents, -1), noise_mode)


class EqualConv2d(nn.Module):
    """Conv with equalized lr; optional FIR blur before a stride-2 conv; optional bias + act."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, down: bool = False,
                 activate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if activate else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size * kernel_size)
        self.down = down
        self.padding = 0 if down else kernel_size // 2
        p = 4 - 2 + (kernel_size - 1)
        self.blur_pad = ((p + 1) // 2, p // 2)
        self.register_buffer("blur_kernel", fir_kernel() if down else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = upfirdn2d(x, self.blur_kernel, pad=self.blur_pad)
        x = F.conv2d(x, self.weight * self.scale, stride=2 if self.down else 1, padding=self.padding)
        return bias_act(x, self.bias) if self.bias is not None else x


class DiscriminatorBlock(nn.Module):
    """Residual block: two convs (second one downsamples) plus a 1x1 downsampling skip."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = EqualConv2d(in_ch, in_ch, 3)
        self.conv2 = EqualConv2d(in_ch, out_ch, 3, down=True)
        self.skip = EqualConv2d(in_ch, out_ch, 1, down=True, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, eps: float = 1e-8) -> torch.Tensor:
    """Append the mean standard deviation over groups of samples as one extra channel."""
    b, c, h, w = x.shape
    group = min(b, group_size)
    while b % group:
        group -= 1
    y = x.view(group, -1, 1, c, h, w)
    y = torch.sqrt(y.var(0, unbiased=False) + eps)
    y = y.mean([2, 3, 4], keepdim=True).squeeze(2)
    y = y.repeat(group, 1, h, w)
    return torch.cat([x, y], 1)


class StyleGAN2Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator with minibatch stddev; returns (B, 1) logits."""

    def __init__(self, size: int = 1024, channel_base: int = 32768, channel_max: int = 512,
                 mbstd_group: int = 4):
        super().__init__()
        log = _check_size(size)
        self.size = size
        ch = stylegan_channels(size, channel_base, channel_max)
        self.from_rgb = EqualConv2d(3, ch[size], 1)
        self.blocks = nn.ModuleList(
            [DiscriminatorBlock(ch[2 ** i], ch[2 ** (i - 1)]) for i in range(log, 2, -1)])
        self.final_conv = EqualConv2d(ch[4] + 1, ch[4], 3)
        self.final_fc = EqualLinear(ch[4] * 16, ch[4], activation=True)
        self.out = EqualLinear(ch[4], 1)
        self.mbstd_group = mbstd_group

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.from_rgb(img)
        for block in self.blocks:
            x = block(x)
        x = self.final_conv(minibatch_stddev(x, self.mbstd_group))
        return self.out(self.final_fc(x.flatten(1)))
