"""Turn a `panini train restore` result into the bundled default model, and measure it.

    python scripts/make_default_model.py RUN/final.safetensors --train-dir DATA/train \
        --heldout DATA/heldout --out models/weights

1. vDR statistics of the training inputs (Eq. 10 with the training ranges on training
   faces) go into the file's metadata, so `inspect`/`restore` can flag unusual inputs.
2. The weights are stored in float16 (half the size; loading casts them back to
   float32): the shipped file must stay under 20 MB.
3. The model card table: on held-out faces, for each degradation level, PSNR/SSIM of
   the degraded input (at its own 64 px against the area-reduced ground truth), of
   bicubic and Lanczos upscaling, and of the model, plus the mean theta (Table 4).
   The model is also measured at the input's 64 px (its output area-reduced), so it
   can be compared with the input on equal terms. Written to OUT/default_eval.json
   and printed as markdown. `--eval-only` measures a weights file without writing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from panini_models import vdr_stats
from panini_models.checkpoints import build, read_weights, save_weights
from panini_models.degradations import DegradationParams, DegradationRanges, degrade
from panini_models.tensors import bgr_to_tensor, tensor_to_bgr
from panini_models.training.data import FaceDataset, list_images, read_square
from panini_models.training.metrics import psnr, ssim

# Table 4 protocol: r varies, sigma / noise / JPEG fixed at moderate values (1024-px units)
LEVELS_R = (10, 20, 40, 80, 160)
FIXED = {"sigma": 2.0, "noise": 10.0, "jpeg": 40}


@torch.no_grad()
def training_vdr_stats(model, files, n: int, seed: int) -> dict:
    cfg = model.config
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(files), size=min(n, len(files)), replace=False)
    data = FaceDataset([files[i] for i in pick], cfg.out_size, cfg.in_size, "eq10", DegradationRanges(),
                       seed=seed, flip=False)
    vdrs = []
    for start in range(0, len(data), 32):
        lq = torch.stack([data[(0, i)]["lq"] for i in range(start, min(len(data), start + 32))])
        vdrs.append(model(lq, return_aux=True).vdr.float().numpy())
    return vdr_stats.compute(np.concatenate(vdrs))


@torch.no_grad()
def evaluate(model, files, seed: int) -> list[dict]:
    cfg = model.config
    rows = []
    for r in LEVELS_R:
        params = DegradationParams(sigma=FIXED["sigma"], r=float(r), noise=FIXED["noise"], jpeg=FIXED["jpeg"])
        acc = {k: [] for k in ("psnr_input", "ssim_input", "psnr_bicubic", "ssim_bicubic", "psnr_lanczos",
                               "ssim_lanczos", "psnr_model", "ssim_model", "psnr_model64", "ssim_model64",
                               "theta")}
        for start in range(0, len(files), 16):
            gts = [read_square(f, cfg.out_size) for f in files[start:start + 16]]
            lqs = [degrade(gt, params, out_size=cfg.in_size, rng=seed + start + i) for i, gt in enumerate(gts)]
            out = model(torch.cat([bgr_to_tensor(x) for x in lqs]), return_aux=True)
            for gt, lq, res, theta in zip(gts, lqs, tensor_to_bgr(out.image), out.theta.tolist()):
                small_gt = cv2.resize(gt, (cfg.in_size, cfg.in_size), interpolation=cv2.INTER_AREA)
                size = (cfg.out_size, cfg.out_size)
                bic = cv2.resize(lq, size, interpolation=cv2.INTER_CUBIC)
                lan = cv2.resize(lq, size, interpolation=cv2.INTER_LANCZOS4)
                res64 = cv2.resize(res, (cfg.in_size, cfg.in_size), interpolation=cv2.INTER_AREA)
                for name, a, b in (("input", lq, small_gt), ("bicubic", bic, gt), ("lanczos", lan, gt),
                                   ("model", res, gt), ("model64", res64, small_gt)):
                    acc[f"psnr_{name}"].append(psnr(a, b))
                    acc[f"ssim_{name}"].append(ssim(a, b))
                acc["theta"].append(theta)
        rows.append({"r": r, **FIXED, "faces": len(files), **{k: float(np.mean(v)) for k, v in acc.items()}})
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| r (1024-px units) | input PSNR / SSIM (64 px) | panini at 64 px | bicubic | Lanczos "
            "| panini default | theta |\n|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {x['r']} | {x['psnr_input']:.2f} / {x['ssim_input']:.3f} | {x['psnr_model64']:.2f} / "
        f"{x['ssim_model64']:.3f} | {x['psnr_bicubic']:.2f} / "
        f"{x['ssim_bicubic']:.3f} | {x['psnr_lanczos']:.2f} / {x['ssim_lanczos']:.3f} | "
        f"**{x['psnr_model']:.2f} / {x['ssim_model']:.3f}** | {x['theta']:.3f} |\n" for x in rows)
    return head + body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path, help="final.safetensors of a `panini train restore` run")
    ap.add_argument("--train-dir", type=Path, required=True)
    ap.add_argument("--heldout", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("models/weights"))
    ap.add_argument("--name", default="default")
    ap.add_argument("--stats-faces", type=int, default=1024)
    ap.add_argument("--info", type=Path, help="JSON of training facts to store in the metadata")
    ap.add_argument("--seed", type=int, default=2022)
    ap.add_argument("--eval-only", action="store_true", help="print the held-out table, write nothing")
    a = ap.parse_args()

    kind, cfg, state, meta = read_weights(a.weights)
    if a.eval_only:
        print(markdown(evaluate(build(kind, cfg, state, a.weights).eval(), list_images(a.heldout), a.seed)))
        return 0
    model = build(kind, cfg, state, a.weights).eval()
    stats = training_vdr_stats(model, list_images(a.train_dir), a.stats_faces, a.seed)
    extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "kind", "config")}
    extra.update(vdr_stats.to_metadata(stats))
    extra["stored_dtype"] = "float16 (loaded as float32)"
    if a.info:
        extra["training"] = json.dumps(json.loads(a.info.read_text()), sort_keys=True)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    target = a.out / f"{a.name}.safetensors"
    digest = save_weights(target, half, kind, cfg, extra)
    (a.out / f"{a.name}.json").write_text(json.dumps({"sha256": digest, "bytes": target.stat().st_size,
                                                      "source": str(a.weights.name)}, indent=1) + "\n")
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}...)")

    # measure the file as shipped (float16 weights back in float32)
    kind, cfg, state, _ = read_weights(target)
    shipped = build(kind, cfg, state, target).eval()
    rows = evaluate(shipped, list_images(a.heldout), a.seed)
    (a.out / f"{a.name}_eval.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
