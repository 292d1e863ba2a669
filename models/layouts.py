"""Key layouts of other projects' checkpoints, as rename rules to and from ours.

Each rule maps one of our parameter names (regex) to the foreign name, with a
shape transform where the layouts differ (the official code stores modulated
conv weights as 1 x out x in x k x k and ToRGB biases as 1 x 3 x 1 x 1).
Foreign buffers that are constants in our model (FIR kernels) are listed with
the value they must hold.

Layouts: the official Panini (mmedit, backbone names), mmgen StyleGAN2
(generator and discriminator), rosinality stylegan2-pytorch (g_ema / d), and
the official MoCo degradation encoder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from .ops import fir_kernel

Transform = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]
SAME: Transform = (lambda t: t, lambda t: t)
MODCONV: Transform = (lambda t: t.unsqueeze(0), lambda t: t.squeeze(0))          # ours -> theirs, theirs -> ours
RGB_BIAS: Transform = (lambda t: t.view(1, 3, 1, 1), lambda t: t.reshape(3))


@dataclass(frozen=True)
class Rule:
    ours: str                                  # regex over our names
    theirs: Callable[[re.Match], str]          # their name from the match
    transform: Transform = SAME


def _r(ours: str, theirs: str | Callable[[re.Match], str], transform: Transform = SAME) -> Rule:
    fn = theirs if callable(theirs) else (lambda m, t=theirs: m.expand(t))
    return Rule(ours, fn, transform)


def _plus1(group: int, template: str) -> Callable[[re.Match], str]:
    """Their index is ours + 1 (mmgen and rosinality count a leading module we do not have)."""
    return lambda m: template.format(i=int(m.group(group)) + 1)


_STYLED = r"(conv1|convs\.\d+)"
_RGB = r"(to_rgb1|to_rgbs\.\d+)"
_MOD = r"(conv1|convs\.\d+|to_rgb1|to_rgbs\.\d+)"


def _stylegan_mmgen(p: str, q: str) -> list[Rule]:
    """Our StyleGAN2Generator under prefix p <-> mmgen StyleGANv2Generator under prefix q."""
    return [
        _r(rf"{p}mapping\.layers\.(\d+)\.weight", _plus1(1, q + "style_mapping.{i}.linear.weight_orig")),
        _r(rf"{p}mapping\.layers\.(\d+)\.bias", _plus1(1, q + "style_mapping.{i}.bias")),
        _r(rf"{p}const", q + "constant_input.input"),
        _r(rf"{p}noise_(\d+)", q + r"injected_noise_\1"),
        _r(rf"{p}{_MOD}\.conv\.weight", q + r"\1.conv.weight_orig", MODCONV),
        _r(rf"{p}{_MOD}\.conv\.affine\.weight", q + r"\1.conv.style_modulation.linear.weight_orig"),
        _r(rf"{p}{_MOD}\.conv\.affine\.bias", q + r"\1.conv.style_modulation.bias"),
        _r(rf"{p}{_STYLED}\.noise_strength", q + r"\1.noise_injector.weight"),
        _r(rf"{p}{_STYLED}\.bias", q + r"\1.activate.bias"),
        _r(rf"{p}{_RGB}\.bias", q + r"\1.bias", RGB_BIAS),
    ]


def _stylegan_rosinality() -> list[Rule]:
    return [
        _r(r"mapping\.layers\.(\d+)\.weight", _plus1(1, "style.{i}.weight")),
        _r(r"mapping\.layers\.(\d+)\.bias", _plus1(1, "style.{i}.bias")),
        _r(r"const", "input.input"),
        _r(r"noise_(\d+)", r"noises.noise_\1"),
        _r(rf"{_MOD}\.conv\.weight", r"\1.conv.weight", MODCONV),
        _r(rf"{_MOD}\.conv\.affine\.weight", r"\1.conv.modulation.weight"),
        _r(rf"{_MOD}\.conv\.affine\.bias", r"\1.conv.modulation.bias"),
        _r(rf"{_STYLED}\.noise_strength", r"\1.noise.weight"),
        _r(rf"{_STYLED}\.bias", r"\1.activate.bias"),
        _r(rf"{_RGB}\.bias", r"\1.bias", RGB_BIAS),
    ]


def _discriminator(conv: str, linear: str) -> list[Rule]:
    """Our StyleGAN2Discriminator <-> mmgen (conv='conv.weight_orig', linear='linear.weight_orig')
    or rosinality (conv='weight', linear='weight')."""
    return [
        _r(r"from_rgb\.weight", f"convs.0.0.{conv}"),
        _r(r"from_rgb\.bias", "convs.0.1.bias"),
        _r(r"blocks\.(\d+)\.conv1\.weight", _plus1(1, "convs.{i}.conv1.0." + conv)),
        _r(r"blocks\.(\d+)\.conv1\.bias", _plus1(1, "convs.{i}.conv1.1.bias")),
        _r(r"blocks\.(\d+)\.conv2\.weight", _plus1(1, "convs.{i}.conv2.1." + conv)),
        _r(r"blocks\.(\d+)\.conv2\.bias", _plus1(1, "convs.{i}.conv2.2.bias")),
        _r(r"blocks\.(\d+)\.skip\.weight", _plus1(1, "convs.{i}.skip.1." + conv)),
        _r(r"final_conv\.weight", f"final_conv.0.{conv}"),
        _r(r"final_conv\.bias", "final_conv.1.bias"),
        _r(r"final_fc\.weight", f"final_linear.0.{linear}"),
        _r(r"final_fc\.bias", "final_linear.0.bias"),
        _r(r"out\.weight", f"final_linear.1.{linear}"),
        _r(r"out\.bias", "final_linear.1.bias"),
    ]


def _panini_official() -> list[Rule]:
    """Our PaniniNet <-> the official Panini_MFR / Panini_SR backbone (no restorer prefix)."""
    return _stylegan_mmgen(r"stylegan\.", "generator.") + [
        _r(r"dre\.body\.(.+)", r"deg_encoder.E.\1"),
        _r(r"dre\.head\.(.+)", r"deg_encoder.mlp.\1"),
        _r(r"dr_const", "choice_vector"),
        _r(r"ife\.rrdb\.(.+)", r"encoder.0.0.\1"),
        _r(r"ife\.cbam\.conv\.(.+)", r"encoder.0.1.fea_preprocess.\1"),
        _r(r"ife\.cbam\.channel_mlp\.0\.(.+)", r"encoder.0.1.ChannelGate.mlp.1.\1"),
        _r(r"ife\.cbam\.channel_mlp\.2\.(.+)", r"encoder.0.1.ChannelGate.mlp.3.\1"),
        _r(r"ife\.cbam\.spatial_conv\.(.+)", r"encoder.0.1.SpatialGate.spatial.conv.\1"),
        _r(r"ife\.cbam\.spatial_bn\.(.+)", r"encoder.0.1.SpatialGate.spatial.bn.\1"),
        _r(r"ife\.stem\.(\d+)\.(.+)", lambda m: f"encoder.0.{int(m.group(1)) + 2}.{m.group(2)}"),
        _r(r"ife\.down\.(\d+)\.0\.(.+)", lambda m: f"encoder.{int(m.group(1)) + 1}.0.{m.group(2)}"),
        _r(r"ife\.branch\.(\d+)\.(.+)", r"fusion_out.\1.\2"),
        _r(r"lce\.conv\.(.+)", r"encoder.5.0.\1"),
        _r(r"lce\.fc\.(.+)", r"encoder.5.3.\1"),
        _r(r"masks\.mlp\.(.+)", r"AFS_maskGen.mapping.\1"),
    ]


RULES: dict[str, list[Rule]] = {
    "panini_official": _panini_official(),
    "stylegan2_mmgen": _stylegan_mmgen("", ""),
    "stylegan2_rosinality": _stylegan_rosinality(),
    "discriminator_mmgen": _discriminator("conv.weight_orig", "linear.weight_orig"),
    "discriminator_rosinality": _discriminator("weight", "weight"),
    "dre_moco": [_r(r"body\.(.+)", r"module.encoder_q.E.\1"), _r(r"head\.(.+)", r"module.encoder_q.mlp.\1")],
}


def generator_constants(num_up_blocks: int, prefix: str) -> dict[str, torch.Tensor]:
    """The FIR kernel buffers a foreign StyleGAN2 generator file holds, with their values."""
    k = fir_kernel() * 4          # both layouts store the upsampling kernels pre-scaled by factor^2
    out = {}
    for i in range(num_up_blocks):
        out[f"{prefix}convs.{2 * i}.conv.blur.kernel"] = k
        out[f"{prefix}to_rgbs.{i}.upsample.kernel"] = k
    return out


def discriminator_constants(num_blocks: int) -> dict[str, torch.Tensor]:
    k = fir_kernel()
    out = {}
    for i in range(1, num_blocks + 1):
        out[f"convs.{i}.conv2.0.kernel"] = k
        out[f"convs.{i}.skip.0.kernel"] = k
    return out


def rename(ours: list[str], layout: str) -> dict[str, tuple[str, Transform]]:
    """Our names -> (their name, transform). Raises if one of ours has no rule."""
    rules = RULES[layout]
    out = {}
    for name in ours:
        for rule in rules:
            m = re.fullmatch(rule.ours, name)
            if m:
                out[name] = (rule.theirs(m), rule.transform)
                break
        else:
            raise KeyError(f"no {layout} rule for our parameter {name}")
    return out
