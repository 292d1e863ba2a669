"""Losses of Panini-Net's fine-tuning and of the small StyleGAN2 pre-training.

- L1 (weight 1 in the official config).
- VGG16 perceptual: MSE between `features.21` (conv4_3, before its ReLU) of output and
  target, weight 1e-2. The official mmedit config feeds [-1, 1] images through the
  ImageNet mean/std normalisation meant for [0, 1] images; we keep that quirk so the
  term has the official scale. ImageNet VGG16 weights are in no PyPI or Debian package,
  so they come from a file the user gives (torchvision layout, `features.N.weight`).
- Without that file: feature matching on the discriminator (mean L1 between its
  intermediate activations for output and target, target detached; as in pix2pixHD).
  It is a documented substitute, not a perceptual loss: the discriminator is trained
  alongside, so the features move with it. A randomly initialised VGG is never used.
- Vanilla GAN: BCE with logits; generator target 1 (the non-saturating form), the
  discriminator gets BCE(D(real), 1) + BCE(D(fake), 0). R1 for the prior training.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..stylegan2 import StyleGAN2Discriminator, minibatch_stddev

# torchvision vgg16().features up to and including index 21 (conv4_3); "M" is max-pool.
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]
CONV4_3 = 21
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def l1_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return (fake - real).abs().mean()


class VGG16Features(nn.Sequential):
    """vgg16.features[0..21] with torchvision's indices, so `features.N.*` keys load as-is."""

    def __init__(self):
        layers: list[nn.Module] = []
        prev = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(prev, item, 3, 1, 1), nn.ReLU(inplace=True)]
                prev = item
        super().__init__(*layers[:CONV4_3 + 1])     # ends with conv4_3, before its ReLU


def load_vgg16(path) -> VGG16Features:
    """Read VGG16 ImageNet weights (torchvision layout; a `.pth` state dict read with
    weights_only=True, or `.safetensors`); classifier and deeper layers are ignored."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(sd).__name__}")
    net = VGG16Features()
    want = net.state_dict()
    prefixes = {k[: k.index("features.")] for k in sd if "features." in k}
    prefix = next((p for p in sorted(prefixes, key=len) if f"{p}features.0.weight" in sd), None)
    if prefix is None:
        raise ValueError(f"{path}: no `features.0.weight` key: not a torchvision-layout VGG16 file")
    picked = {}
    for name, ref in want.items():
        key = f"{prefix}features.{name}"
        if key not in sd:
            raise ValueError(f"{path}: missing {key}")
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise ValueError(f"{path}: {key} has shape {tuple(sd[key].shape)}, VGG16 needs {tuple(ref.shape)}")
        picked[name] = sd[key].float()
    net.load_state_dict(picked)
    net.eval().requires_grad_(False)
    return net


class PerceptualLoss(nn.Module):
    """MSE of VGG16 conv4_3 features, inputs normalised as the official config does."""

    def __init__(self, vgg: VGG16Features):
        super().__init__()
        self.vgg = vgg.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True):
        return super().train(False)         # always eval: frozen weights, no dropout/BN anyway

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vgg((x - self.mean) / self.std)   # official quirk: x is in [-1, 1]

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.features(real)
        return F.mse_loss(self.features(fake), target)


def discriminator_features(disc: StyleGAN2Discriminator, img: torch.Tensor):
    """Run the discriminator and keep its activations: -> ([from_rgb, block outputs...,
    final conv], logits). Logits are the same as disc(img) (a test checks it)."""
    feats = []
    x = disc.from_rgb(img)
    feats.append(x)
    for block in disc.blocks:
        x = block(x)
        feats.append(x)
    x = disc.final_conv(minibatch_stddev(x, disc.mbstd_group))
    feats.append(x)
    return feats, disc.out(disc.final_fc(x.flatten(1)))


def feature_matching(fake_feats, real_feats) -> torch.Tensor:
    """Mean over layers of the L1 distance between activations (real side detached)."""
    return sum((f - r.detach()).abs().mean() for f, r in zip(fake_feats, real_feats)) / len(fake_feats)


def gan_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def gan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (loss on real, loss on fake); the discriminator loss is their sum."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)),
            F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean squared gradient norm of D at real images (real must require grad)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()
