"""Panini-Net: GAN-prior face restoration with degradation-aware feature interpolation.

Data flow (paper Fig. 1, official code):
  X -> DRE -> vDR -> MLP + softmax over the pair -> (mask_gan, mask_img) per DAFI block (Eq. 6)
  X -> IFE -> features at 4, 8, 16, 32, 64 px (Eq. 1-2) and w+ (Eq. 3)
  StyleGAN2 from its constant input; before each upsampling block whose input is
  <= 64 px: F = F_gan * mask_gan + F_ife * mask_img (Eq. 7-8). The ToRGB of the
  same resolution has already consumed the unfused feature (as in the official code).
  Blocks above 64 px run unchanged; the RGB skip output is Y (Eq. 9).

Variants: "mfr" (DRE), "sr" (a learned constant vector instead of vDR),
"catconv" (Table 3 ablation: concatenation + conv instead of DAFI).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn

from .dre import OFFICIAL_CHANNELS, OFFICIAL_STRIDES, DegradationEncoder
from .ife import FeatureExtractor, LatentEncoder
from .stylegan2 import StyleGAN2Generator, stylegan_channels

VARIANTS = ("mfr", "sr", "catconv")


@dataclass
class PaniniConfig:
    """Architecture of one Panini-Net; saved as JSON beside the weights."""
    variant: str = "mfr"
    in_size: int = 512
    out_size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channel_base: int = 32768
    channel_max: int = 512
    rrdb_channels: int = 8
    num_rrdbs: int = 2
    rrdb_growth: int = 32
    cbam_reduction: int = 2
    stem_width: int = 32
    latent_hidden: int = 256
    dr_dim: int = 256
    dre_channels: tuple = OFFICIAL_CHANNELS
    dre_strides: tuple = OFFICIAL_STRIDES
    dre_input_size: int = 256
    mask_hidden: int = 256
    num_fusions: int = 5

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        self.dre_channels, self.dre_strides = tuple(self.dre_channels), tuple(self.dre_strides)
        if self.variant == "mfr" and self.dre_channels[-1] != self.dr_dim:
            raise ValueError("the last DRE width must equal dr_dim")
        if self.out_size < 4 * 2 ** self.num_fusions:
            raise ValueError(f"out_size must be at least {4 * 2 ** self.num_fusions}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PaniniConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown Panini config fields: {unknown}")
        return cls(**d)


PRESETS: dict[str, PaniniConfig] = {
    # The released Panini_MFR (512 -> 1024) and Panini_SR (64 -> 1024, 16x).
    "mfr": PaniniConfig(),
    "sr": PaniniConfig(variant="sr", in_size=64, rrdb_channels=64, num_rrdbs=23, cbam_reduction=8),
    "catconv": PaniniConfig(variant="catconv"),
    # Scaled down for CPU training: 64 -> 128 px, at most 128 channels.
    "small": PaniniConfig(in_size=64, out_size=128, style_dim=256, n_mlp=4, channel_base=8192,
                          channel_max=128, rrdb_channels=16, num_rrdbs=1, rrdb_growth=16,
                          cbam_reduction=4, latent_hidden=32, dr_dim=128,
                          dre_channels=(32, 32, 64, 64, 128, 128), dre_input_size=64,
                          mask_hidden=128),
    # Sized for real photos and a short GPU run (scripts/device_train.sh): 128 -> 256 px (an FFHQ
    # square of a UTKFace chip is ~320 px, so the 256 px ground truth is near native), 6.58 M parameters
    # (a 12.9 MiB float16 file). StyleGAN2 at 128 channels up to 128 px and 64 at 256 px, a 32-channel
    # RRDB on the 128 px input; the DRE is the `small` one (64 px after pooling, 128-d vDR), so the
    # bundled default model's UDRL-trained DRE can be reused.
    "base128": PaniniConfig(in_size=128, out_size=256, style_dim=256, n_mlp=4, channel_base=16384,
                            channel_max=128, rrdb_channels=32, num_rrdbs=1, rrdb_growth=16,
                            cbam_reduction=4, latent_hidden=32, dr_dim=128,
                            dre_channels=(32, 32, 64, 64, 128, 128), dre_input_size=64,
                            mask_hidden=128),
}


@dataclass
class PaniniOutput:
    """What one forward returns. Masks are the ones actually used (after any bias)."""
    image: torch.Tensor                      # (B, 3, out, out) RGB, nominally [-1, 1], not clamped
    vdr: torch.Tensor | None = None          # (B, dr_dim) degradation representation
    mask_gan: list[torch.Tensor] = field(default_factory=list)   # per DAFI block (B, C_k)
    mask_img: list[torch.Tensor] = field(default_factory=list)
    latent: torch.Tensor | None = None       # w+ (B, num_latents, style_dim)

    @property
    def thetas(self) -> torch.Tensor:
        """(B, num_fusions): theta_1..theta_5, channel means of the GAN-side masks (Eq. 11)."""
        return torch.stack([m.mean(dim=1) for m in self.mask_gan], 1)

    @property
    def theta(self) -> torch.Tensor:
        """(B,): the paper's theta, the DAFI5 (64 px) GAN-prior usage ratio."""
        return self.mask_gan[-1].mean(dim=1)


class MaskGenerator(nn.Module):
    """vDR -> one (mask_gan, mask_img) channel pair per DAFI block (Eq. 6).

    One MLP for all blocks as in the official model; the logits of block k are
    [gan logits (C_k), image logits (C_k)], softmaxed over the pair.
    """

    def __init__(self, dr_dim: int, hidden: int, channels: Sequence[int]):
        super().__init__()
        self.channels = list(channels)
        self.mlp = nn.Sequential(nn.Linear(dr_dim, hidden), nn.LeakyReLU(0.1),
                                 nn.Linear(hidden, 2 * sum(self.channels)))

    def forward(self, vdr: torch.Tensor) -> list[torch.Tensor]:
        """-> list of (B, 2, C_k) softmaxed masks; [:, 0] is the GAN side."""
        logits = self.mlp(vdr)
        out, start = [], 0
        for c in self.channels:
            out.append(logits[:, start:start + 2 * c].view(-1, 2, c).softmax(dim=1))
            start += 2 * c
        return out


def _bias_list(mask_bias, n: int, blocks: Sequence[int] | None) -> list[float]:
    """Normalise a scalar or per-block bias, restricted to `blocks` (1-based DAFI indices)."""
    if mask_bias is None:
        return [0.0] * n
    if isinstance(mask_bias, (int, float)):
        biases = [float(mask_bias)] * n
    else:
        biases = [float(b) for b in mask_bias]
        if len(biases) != n:
            raise ValueError(f"mask_bias needs {n} values, got {len(biases)}")
    if blocks is not None:
        bad = [b for b in blocks if not 1 <= b <= n]
        if bad:
            raise ValueError(f"DAFI blocks are numbered 1..{n}, got {bad}")
        biases = [b if (i + 1) in blocks else 0.0 for i, b in enumerate(biases)]
    return biases


class PaniniNet(nn.Module):
    def __init__(self, config: PaniniConfig | str = "mfr"):
        super().__init__()
        cfg = PRESETS[config] if isinstance(config, str) else config
        self.config = cfg
        self.stylegan = StyleGAN2Generator(cfg.out_size, cfg.style_dim, cfg.n_mlp,
                                           cfg.channel_base, cfg.channel_max)
        ch = stylegan_channels(cfg.out_size, cfg.channel_base, cfg.channel_max)
        self.fusion_channels = [ch[4 * 2 ** k] for k in range(cfg.num_fusions)]
        self.ife = FeatureExtractor(cfg.in_size, ch, cfg.rrdb_channels, cfg.num_rrdbs,
                                    cfg.rrdb_growth, cfg.cbam_reduction, cfg.stem_width,
                                    cfg.num_fusions)
        self.lce = LatentEncoder(ch[4], self.stylegan.num_latents, cfg.style_dim, cfg.latent_hidden)
        self.dre = self.dr_const = self.masks = self.cat_convs = None
        if cfg.variant == "mfr":
            self.dre = DegradationEncoder(cfg.dre_channels, cfg.dre_strides, cfg.dre_input_size)
        elif cfg.variant == "sr":
            self.dr_const = nn.Parameter(torch.randn(1, cfg.dr_dim))
        if cfg.variant == "catconv":
            self.cat_convs = nn.ModuleList([nn.Conv2d(2 * c, c, 3, 1, 1) for c in self.fusion_channels])
        else:
            self.masks = MaskGenerator(cfg.dr_dim, cfg.mask_hidden, self.fusion_channels)

    @property
    def num_fusions(self) -> int:
        return self.config.num_fusions

    def degradation_vector(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.dre is not None:
            return self.dre(x)
        if self.dr_const is not None:
            return self.dr_const.expand(x.shape[0], -1)
        return None

    def forward(self, x: torch.Tensor, *, mask_bias=None, blocks: Sequence[int] | None = None,
                zero_gan: bool = False, zero_img: bool = False, noise_mode: str = "const",
                return_aux: bool = False, vdr: torch.Tensor | None = None):
        """Restore x (B, 3, in, in) RGB in [-1, 1].

        mask_bias: added to the GAN-side mask (scalar or one per block), clamped to
        [0, 1]; the image side gets one minus it. blocks: 1-based DAFI indices
        the bias applies to (default all). zero_gan / zero_img: the paper's
        Eq. 12 (Y_IFE) and Eq. 13 (Y_GPB) switches. vdr: a precomputed (B, dr_dim)
        degradation vector used instead of running the DRE on x (e.g. one smoothed
        along a video track); only the `mfr` variant takes one (`sr` has a learned
        constant, `catconv` no masks: both raise). Returns the image, or a
        PaniniOutput with vDR, masks, thetas and w+ when return_aux.
        """
        size = self.config.in_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(f"input must be (B, 3, {size}, {size}), got {tuple(x.shape)}")
        if vdr is None:
            vdr = self.degradation_vector(x)
        elif self.dre is None:
            raise ValueError(f"the {self.config.variant} variant has no degradation encoder: "
                             f"it cannot take a given vdr")
        elif vdr.shape != (x.shape[0], self.config.dr_dim):
            raise ValueError(f"vdr must be ({x.shape[0]}, {self.config.dr_dim}), got {tuple(vdr.shape)}")
        feats, feat4 = self.ife(x)
        latent = self.lce(feat4)
        mask_gan: list[torch.Tensor] = []
        mask_img: list[torch.Tensor] = []
        if self.masks is not None:
            biases = _bias_list(mask_bias, self.num_fusions, blocks)
            for pair, b in zip(self.masks(vdr), biases):
                g, i = pair[:, 0], pair[:, 1]
                if b != 0.0:
                    g = (g + b).clamp(0.0, 1.0)
                    i = 1.0 - g
                mask_gan.append(g)
                mask_img.append(i)
        elif mask_bias is not None and any(_bias_list(mask_bias, self.num_fusions, blocks)):
            raise ValueError("the catconv variant has no DAFI masks to bias")

        def fuse(k: int, f_gan: torch.Tensor) -> torch.Tensor:
            if k >= self.num_fusions:
                return f_gan
            f_img = feats[k]
            if zero_gan:
                f_gan = torch.zeros_like(f_gan)
            if zero_img:
                f_img = torch.zeros_like(f_img)
            if self.cat_convs is not None:
                return self.cat_convs[k](torch.cat([f_gan, f_img], 1))
            g = mask_gan[k][:, :, None, None].to(f_gan.dtype)
            i = mask_img[k][:, :, None, None].to(f_gan.dtype)
            return g * f_gan + i * f_img

        image = self.stylegan.synthesis(latent, noise_mode=noise_mode, fuse=fuse)
        if not return_aux:
            return image
        return PaniniOutput(image=image, vdr=vdr, mask_gan=mask_gan, mask_img=mask_img, latent=latent)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def num_latents(out_size: int) -> int:
    return 2 * int(math.log2(out_size)) - 2
