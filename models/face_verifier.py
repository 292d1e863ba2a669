"""A small CNN that checks, on the aligned view, that a detection is a face.

Why: the detector fine-tuned on degraded faces scores every window of an image and must
tell faces from hands, arms and flowers from that window alone; at the cut that keeps
small old-photo faces it lets some through. A verifier sees instead the middle of the
FFHQ crop cut with the detection's own landmarks (brows to chin): a face lands with its
eyes and mouth where the template puts them, a hand does not.

Status: an experiment, not used by any command. scripts/train_verifier.py trains it on
what the detector finds on training faces and face-free pieces; it kept validation faces
and refused every face-free validation piece, but on the shared whole photos it accepted
the hands and ornaments it was meant to refuse (benchmarks/results/detect_default.md).
It would need negatives like those, which this project's data does not hold.

Each crop is standardised (its own mean and spread per channel) before the net, so a
faded or harsh photo looks like any other. Weights: safetensors, kind "face-verifier".
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
from torch import nn

from .checkpoints import CheckpointError, read_weights, save_weights

KIND = "face-verifier"
# The view: a CROP px square, INNER of the FFHQ crop's side, centred at (0.5, CENTER_Y) of
# it: brows to chin. It stays inside the UTKFace chips the verifier is trained on (they
# span about x 0.2-0.8, y 0.29-0.89 of their FFHQ crop), so no pasted chip's edge shows:
# a first version on the whole 48 px FFHQ crop learned those edges and refused real faces.
CROP, INNER, CENTER_Y = 24, 0.55, 0.58


class FaceVerifier(nn.Module):
    """(N, 3, crop, crop) standardised crops -> (N,) logits (> 0: a face). `crop`: 3 x 2^k px;
    `inner`, `center_y`: the view's side and centre as shares of the FFHQ crop's side."""

    def __init__(self, width: int = 16, crop: int = CROP, inner: float = INNER, center_y: float = CENTER_Y):
        super().__init__()
        w, n = width, int(round(np.log2(crop / 3)))
        if 3 * 2 ** n != crop:
            raise ValueError(f"crop must be 3 x 2^k px, not {crop}")

        def block(a, b):
            return [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU(),
                    nn.MaxPool2d(2)]
        chans = [3] + [min(w * 2 ** i, 4 * w) for i in range(n)]
        self.features = nn.Sequential(*[m for a, b in zip(chans, chans[1:]) for m in block(a, b)])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * 3 * 3, 64), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(64, 1))
        self.width, self.crop, self.inner, self.center_y = width, crop, inner, center_y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))[:, 0]

    @torch.no_grad()
    def logits(self, crops_bgr8: np.ndarray, batch: int = 512) -> np.ndarray:
        """Logits of (N, 48, 48, 3) uint8 BGR crops."""
        self.eval()
        out = [self(standardise(crops_bgr8[i:i + batch])) for i in range(0, len(crops_bgr8), batch)]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def standardise(crops_bgr8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W), each crop and channel at mean 0, spread 1."""
    x = torch.from_numpy(np.ascontiguousarray(crops_bgr8)).float().permute(0, 3, 1, 2)
    mean = x.mean((2, 3), keepdim=True)
    std = x.std((2, 3), keepdim=True)
    return (x - mean) / (std + 8.0)


def save_verifier(path, net: FaceVerifier, meta: dict) -> str:
    sd = {k: v.detach().float() for k, v in net.state_dict().items()}
    return save_weights(path, sd, KIND, {"width": net.width, "crop": net.crop, "inner": net.inner,
                                             "center_y": net.center_y},
                        {"training": json.dumps(meta)})


def load_verifier(path) -> FaceVerifier:
    kind, config, sd, _ = read_weights(path)
    if kind != KIND:
        raise CheckpointError(path, f"holds a {kind!r} model, not a face verifier ({KIND!r})")
    try:
        net = FaceVerifier(int(config["width"]), int(config["crop"]), float(config["inner"]),
                           float(config["center_y"]))
        net.load_state_dict(sd)
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"does not fit the verifier: {str(e).splitlines()[0]}") from e
    return net.eval()


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror half the batch, shift by up to 2 px: landmarks on degraded faces wander."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    return torch.roll(x, (dy, dx), (2, 3))


def train_verifier(crops: np.ndarray, labels: np.ndarray, path, epochs: int = 12, batch: int = 128,
                   lr: float = 2e-3, log=print) -> str:
    """Plain supervised training, faces and non-faces weighted equally; saves to `path`."""
    g = torch.Generator().manual_seed(0)
    x = standardise(crops)
    y = torch.from_numpy(labels.astype(np.float32))
    pos_weight = torch.tensor((y == 0).sum().item() / max(1.0, y.sum().item()))
    net = FaceVerifier(crop=crops.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-3)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    t = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            loss = loss_fn(net(_augment(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} ({time.time() - t:.0f} s)")
    return save_verifier(path, net, {"epochs": epochs, "lr": lr, "batch": batch, "crops": int(len(x)),
                                     "faces": int(labels.sum())})
