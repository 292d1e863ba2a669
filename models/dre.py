"""The degradation representation encoder (DRE) of Panini-Net.

A conv stack pre-trained by contrastive learning (UDRL, MoCo-style: positives
are different faces under the same degradation) that maps a degraded face to
a 256-d degradation representation vDR. Layout as in the official code: six
[Conv3x3, BatchNorm, LeakyReLU(0.1)] groups (indices 0..17 of `body`), global
average pooling, and a projection `head` (Linear, LeakyReLU, Linear) that only
contrastive training uses; restoration reads the pooled vector before it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

OFFICIAL_CHANNELS = (64, 64, 128, 128, 256, 256)
OFFICIAL_STRIDES = (1, 1, 2, 1, 2, 1)


class DegradationEncoder(nn.Module):
    def __init__(self, channels: Sequence[int] = OFFICIAL_CHANNELS,
                 strides: Sequence[int] = OFFICIAL_STRIDES, input_size: int = 256):
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError("channels and strides must have the same length")
        layers: list[nn.Module] = []
        prev = 3
        for ch, stride in zip(channels, strides):
            layers += [nn.Conv2d(prev, ch, 3, stride, 1), nn.BatchNorm2d(ch), nn.LeakyReLU(0.1)]
            prev = ch
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(prev, prev), nn.LeakyReLU(0.1), nn.Linear(prev, prev))
        self.input_size = input_size
        self.dim = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1] -> vDR (B, dim)."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            # The official model average-pools its 512 px input to 256 px (an exact 2x2 mean).
            x = F.adaptive_avg_pool2d(x, (self.input_size, self.input_size))
        return self.body(x).mean(dim=(2, 3))

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """The contrastive-training projection of a vDR (unused in restoration)."""
        return self.head(v)
