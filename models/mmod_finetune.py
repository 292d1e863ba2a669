"""Fine-tune dlib's MMOD face detector on degraded faces (crops from mmod_crops).

Why: dlib's network misses most old-photo-like faces under 50 px (benchmarks/detect.py).
Training it further on such faces, with negatives it must keep rejecting, lifts their
scores while the window, the pyramid and every box convention stay dlib's, so the
detector code and the landmark fitting built on its boxes are unchanged.

The loss is a per-position hinge in the spirit of dlib's MMOD loss: at each face the
position whose window fits the face (among those with IoU >= 0.5, the one dlib's own
network scores highest on the clean crop, so boxes keep dlib's placement) must score
>= +1; every position whose window misses every face (IoU < 0.25) must score <= -1,
the hardest few of each crop weighted most; positions in between are ignored. An L2
pull towards dlib's weights keeps what the network knew.

Weights are saved as safetensors (kind "mmod": the seven convs, affine folded in) and
read back by `load_finetuned` into an MMODSpec the detector uses like dlib's file.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoints import save_weights
from .dlib_format import MMODSpec
from .mmod import KIND, MMODNet, box_iou, load_finetuned

# ---------------------------------------------------------------- weights
def save_finetuned(path, net: MMODNet, meta: dict) -> str:
    sd = {f"convs.{i}.{k}": getattr(c, k).detach().float() for i, c in enumerate(net.convs) for k in ("weight", "bias")}
    return save_weights(path, sd, KIND, {"window": 80, "convs": len(net.convs)}, {"training": json.dumps(meta)})


def trainable_net(spec: MMODSpec) -> MMODNet:
    net = MMODNet(spec).float()
    for c in net.convs:
        c.requires_grad_(True)
    return net


# ---------------------------------------------------------------- labels and loss
def position_boxes(net: MMODNet, h: int, w: int, window: float = 80.0) -> np.ndarray:
    """(oh*ow, 4) window of every output position of an h x w input, row-major."""
    oh, ow = net.sizes(h, w)[-1]
    row, col = np.mgrid[0:oh, 0:ow]
    px, py = net.output_to_input(col.ravel(), row.ravel())
    half = (window - 1) / 2
    return np.stack([px - half, py - half, px + half, py + half], 1)


def labels(pos_boxes: np.ndarray, faces: list[np.ndarray | None], teacher: np.ndarray) -> np.ndarray:
    """(B, P) int8: 1 the face's position, 0 ignored, -1 negative. `teacher`: (B, P) dlib's
    scores on the clean crops, choosing where among the fitting windows the face sits."""
    out = -np.ones(teacher.shape, np.int8)
    for b, face in enumerate(faces):
        if face is None:
            continue
        iou = box_iou(pos_boxes, face)
        out[b, iou >= 0.25] = 0
        fit = np.nonzero(iou >= 0.5)[0]
        if len(fit):
            out[b, fit[np.argmax(teacher[b, fit])]] = 1
    return out


def hinge_loss(scores: torch.Tensor, lab: torch.Tensor, hardest: int = 4, spread: float = 0.1
               ) -> tuple[torch.Tensor, dict]:
    """scores, lab: (B, P). Mean positive hinge + the mean of each crop's `hardest` negative
    hinges + `spread` x the mean hinge of all negatives."""
    pos = lab == 1
    neg = lab == -1
    hp = torch.relu(1 - scores[pos])
    hn = torch.relu(1 + scores) * neg
    top = hn.topk(min(hardest, hn.shape[1]), dim=1).values.mean()
    loss = (hp.mean() if pos.any() else scores.sum() * 0) + top + spread * hn.sum() / neg.sum().clamp_min(1)
    with torch.no_grad():
        stats = {"pos_hit": float((scores[pos] > 0).float().mean()) if pos.any() else float("nan"),
                 "neg_max": float(scores.masked_fill(~neg, -1e9).amax(1).mean())}
    return loss, stats


# ---------------------------------------------------------------- the loop
def train(spec: MMODSpec, batches, out: Path, steps: int, lr: float = 1e-4, pull: float = 0.5,
          save_every: int = 250, log=print) -> Path:
    """Fine-tune from dlib's weights (or resume from out/last.safetensors) for `steps`
    batches of (degraded uint8 BGR crops, clean crops, face boxes). Saves out/last and
    out/step_N.safetensors; returns the last file."""
    out.mkdir(parents=True, exist_ok=True)
    last, state_file = out / "last.safetensors", out / "state.json"
    teacher = MMODNet(spec).float().eval()
    start = 0
    net = trainable_net(load_finetuned(spec, last) if last.exists() else spec)
    if last.exists() and state_file.exists():
        start = json.loads(state_file.read_text())["step"]
    ref = [p.detach().clone() for p in trainable_net(spec).parameters()]     # dlib's weights
    ref_norm = [float((r ** 2).mean()) + 1e-12 for r in ref]
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    mean = torch.tensor(spec.mean_rgb, dtype=torch.float32)[None, :, None, None]
    boxes_cache: dict[tuple[int, int], np.ndarray] = {}
    t0, hist = time.time(), []
    for step, (deg, clean, faces) in zip(range(start, steps), batches):
        x = (deg.flip(-1).permute(0, 3, 1, 2).float() - mean) / 256.0      # BGR uint8 -> normalised RGB
        hw = tuple(x.shape[2:])
        if hw not in boxes_cache:
            boxes_cache[hw] = position_boxes(net, *hw)
        with torch.no_grad():
            tc = teacher((clean.flip(-1).permute(0, 3, 1, 2).float() - mean) / 256.0).flatten(1).numpy()
        lab = torch.from_numpy(labels(boxes_cache[hw], faces, tc))
        scores = net(x).flatten(1)
        loss, stats = hinge_loss(scores, lab)
        reg = sum(((p - r) ** 2).mean() / n for p, r, n in zip(net.parameters(), ref, ref_norm))
        opt.zero_grad(set_to_none=True)
        (loss + pull * reg).backward()
        opt.step()
        hist.append([loss.item(), reg.item(), stats["pos_hit"], stats["neg_max"]])
        if (step + 1) % 25 == 0:
            h = np.nanmean(hist, 0)
            log(f"step {step + 1}: loss {h[0]:.3f} pull {h[1]:.4f} positives > 0 {h[2]:.2f} "
                f"hardest negative {h[3]:.2f} ({(time.time() - t0) / len(hist):.2f} s/step)")
            hist, t0 = [], time.time()
        if (step + 1) % save_every == 0 or step + 1 == steps:
            meta = {"step": step + 1, "lr": lr, "pull": pull}
            save_finetuned(last, net, meta)
            if (step + 1) % (4 * save_every) == 0:
                save_finetuned(out / f"step_{step + 1}.safetensors", net, meta)
            state_file.write_text(json.dumps(meta))
    return last
