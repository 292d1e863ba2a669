"""Panini-Net's image feature extractor (IFE, Eq. 1-2) and latent code encoder (LCE, Eq. 3).

As the official model builds it: an ESRGAN RRDB feature extractor at the input
resolution, CBAM attention, plain stride-2 convs down to 64 px, then one conv
per level to 32, 16, 8 and 4 px (the features F~_IFE), an extra conv branch per
level (F_IFE, Eq. 2), and a conv + fully connected head predicting w+ from the
4 px feature.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import fused
from .ops import can_overwrite


def _conv_act(in_ch: int, out_ch: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, stride, 1), nn.LeakyReLU(0.2)]


class ResidualDenseBlock(nn.Module):
    """Five densely connected convs; output scaled by 0.2 and added to the input.

    `forward` avoids the concatenations of the textbook form (`forward_ref`):
    conv_i(cat(f_0..f_{i-1})) = sum_j conv(f_j, W_i[:, cols of f_j]), and all the
    terms that one feature f_j contributes to the later convs come from ONE conv
    with their weight slices stacked along the output channels. Same FLOPs, no
    cat copies, and wide-output convs instead of thin ones: ~2x faster on a CPU
    for the 8-channel RRDB that runs at 512 px in Panini-MFR; equal within
    float32 rounding (tests/test_ife.py).

    In CPU fp32 inference `forward_fused` goes further: one conv per (feature,
    later conv) pair, each added in place into that conv's accumulator by
    oneDNN, biases and the first activation fused into the convs (models/fused.py).
    No partial-sum tensors, no separate add or bias passes: ~1.35x faster again.
    """

    def __init__(self, ch: int, growth: int):
        super().__init__()
        for i in range(5):
            out = ch if i == 4 else growth
            setattr(self, f"conv{i + 1}", nn.Conv2d(ch + i * growth, out, 3, 1, 1))
        self.act = nn.LeakyReLU(0.2)
        self.widths = [ch] + [growth] * 4

    def forward_ref(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i in range(1, 5):
            feats.append(self.act(getattr(self, f"conv{i}")(torch.cat(feats, 1))))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.usable(x, self.conv1.weight):
            return self.forward_fused(x)
        return self.forward_stacked(x)

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """CPU fp32 inference only (fused.usable): no autograd, values as forward_stacked."""
        convs = [getattr(self, f"conv{i + 1}") for i in range(5)]
        fmt = _format_of(x)
        acc: list = [None] * 5
        feat, start = x, 0
        for j, width in enumerate(self.widths):
            for i in range(j, 5):
                weight = convs[i].weight[:, start:start + width].contiguous(memory_format=fmt)
                if j == 0:     # first term of every conv: starts its accumulator, with its bias
                    acc[i] = fused.conv_act(x, weight, convs[i].bias, 1, 0.2 if i == 0 else None)
                else:
                    fused.conv_add_(acc[i], feat, weight, 1)
            if 0 < j < 4:
                nn.functional.leaky_relu_(acc[j], 0.2)
            start += width
            feat = acc[j]
        return acc[4].mul_(0.2).add_(x)

    def forward_stacked(self, x: torch.Tensor) -> torch.Tensor:
        convs = [getattr(self, f"conv{i + 1}") for i in range(5)]
        fmt = _format_of(x)
        acc: list = [None] * 5
        feat, start = x, 0
        for j, width in enumerate(self.widths):
            weight = torch.cat([c.weight[:, start:start + width] for c in convs[j:]], 0)
            parts = nn.functional.conv2d(feat, weight.contiguous(memory_format=fmt), padding=1).split(
                [c.out_channels for c in convs[j:]], 1)
            for i, part in enumerate(parts, j):
                acc[i] = part if acc[i] is None else acc[i] + part
            start += width
            if j < 4:
                feat = self.act(acc[j] + convs[j].bias.view(1, -1, 1, 1))
        return (acc[4] + convs[4].bias.view(1, -1, 1, 1)) * 0.2 + x


def _format_of(x: torch.Tensor) -> torch.memory_format:
    cl = x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
    return torch.channels_last if cl else torch.contiguous_format


class RRDB(nn.Module):
    """Residual-in-residual dense block (three RDBs, residual scaling 0.2)."""

    def __init__(self, ch: int, growth: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(ch, growth)
        self.rdb2 = ResidualDenseBlock(ch, growth)
        self.rdb3 = ResidualDenseBlock(ch, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return out.mul_(0.2).add_(x) if can_overwrite(out) else out * 0.2 + x


class RRDBFeatures(nn.Module):
    """conv_first, a chain of RRDBs, conv_body, and a long skip (the dense block H^6_IFE)."""

    def __init__(self, in_ch: int, ch: int, num_blocks: int, growth: int):
        super().__init__()
        self.conv_first = nn.Conv2d(in_ch, ch, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(ch, growth) for _ in range(num_blocks)])
        self.conv_body = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        return feat + self.conv_body(self.body(feat))


class CBAM(nn.Module):
    """Channel then spatial attention, exactly as the official model executes it.

    The official module applies its pre-processing conv twice: once before the
    channel gate and again before the spatial gate. The spatial gate is a 7x7
    conv without bias over [max, mean] across channels, then BatchNorm, no ReLU.
    """

    def __init__(self, ch: int, reduction: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)
        self.channel_mlp = nn.Sequential(nn.Linear(ch, ch // reduction), nn.ReLU(),
                                         nn.Linear(ch // reduction, ch))
        self.spatial_conv = nn.Conv2d(2, 1, 7, 1, 3, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        gate = self.channel_mlp(y.mean(dim=(2, 3))) + self.channel_mlp(y.amax(dim=(2, 3)))
        y = y * torch.sigmoid(gate)[:, :, None, None]
        z = self.conv(y)
        pooled = torch.cat([z.amax(dim=1, keepdim=True), z.mean(dim=1, keepdim=True)], 1)
        return z * torch.sigmoid(self.spatial_bn(self.spatial_conv(pooled)))


class FeatureExtractor(nn.Module):
    """IFE: returns the fusion features F_IFE at 4, 8, ..., 64 px (Eq. 2) and the 4 px F~_IFE."""

    def __init__(self, in_size: int, channels: dict[int, int], rrdb_channels: int,
                 num_rrdbs: int, growth: int, cbam_reduction: int, stem_width: int = 32,
                 num_fusions: int = 5):
        super().__init__()
        n_down = int(math.log2(in_size // 64))
        if in_size < 64 or 64 * 2 ** n_down != in_size:
            raise ValueError(f"in_size must be 64 * 2^n, got {in_size}")
        self.rrdb = RRDBFeatures(3, rrdb_channels, num_rrdbs, growth)
        self.cbam = CBAM(rrdb_channels, cbam_reduction)
        widths = [stem_width * 2 ** j for j in range(n_down)] + [channels[64]]
        stem: list[nn.Module] = []
        prev = rrdb_channels
        for j, width in enumerate(widths):
            stem += _conv_act(prev, width, 1 if j == 0 else 2)
            prev = width
        self.stem = nn.Sequential(*stem)
        self.resolutions = [4 * 2 ** k for k in range(num_fusions)]      # 4 .. 64
        self.down = nn.ModuleList(
            [nn.Sequential(*_conv_act(channels[res * 2], channels[res], 2))
             for res in reversed(self.resolutions[:-1])])               # 64->32, ..., 8->4
        self.branch = nn.ModuleList([nn.Conv2d(channels[r], channels[r], 3, 1, 1)
                                     for r in self.resolutions])

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """-> ([F_IFE at 4, 8, ..., 64 px], F~_IFE at 4 px)."""
        feat = self.stem(self.cbam(self.rrdb(x)))
        pre = [feat]
        for down in self.down:
            feat = down(feat)
            pre.append(feat)
        pre.reverse()                                 # 4 px first
        return [self.branch[k](f) for k, f in enumerate(pre)], pre[0]


class LatentEncoder(nn.Module):
    """LCE (Eq. 3): conv + LeakyReLU, flatten, fully connected -> w+ (B, n, style_dim)."""

    def __init__(self, in_ch: int, num_latents: int, style_dim: int, hidden: int = 256):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, hidden, 3, 1, 1)
        self.fc = nn.Linear(hidden * 16, num_latents * style_dim)
        self.num_latents, self.style_dim = num_latents, style_dim

    def forward(self, feat4: torch.Tensor) -> torch.Tensor:
        h = nn.functional.leaky_relu(self.conv(feat4), 0.2).flatten(1)
        return self.fc(h).view(-1, self.num_latents, self.style_dim)
