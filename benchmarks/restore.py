"""End-to-end `panini restore` against the model-only forward rate, in one run.

    python benchmarks/restore.py                    # small model (random weights), aligned + whole photos
    python benchmarks/restore.py --model mfr        # an imported model or weight file

Prints faces/s for: the model alone (same batch size), restore --aligned on
aligned faces, and restore on whole photos; the share of wall time the model is
busy; and, for whole photos, detection + alignment + paste/write time relative to
model time (from the manifest's per-file timings).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PANINI_SHARED", REPO.parent / "shared"))


def small_model(path: Path) -> str:
    import torch

    from panini_models.checkpoints import save_weights
    from panini_models.panini import PRESETS, PaniniNet

    torch.manual_seed(0)
    m = PaniniNet(PRESETS["small"])
    save_weights(path, m.state_dict(), "panini", json.loads(m.config.to_json()))
    return str(path)


def model_only(model: str, crops_dir: Path, n: int, batch: int) -> float:
    """faces/s of Restorer alone on the same aligned crops (decoded beforehand)."""
    import cv2

    from panini_cli.pipeline import resize_square
    from panini_models.registry import load_model
    from panini_models.restorer import Restorer

    r = Restorer(load_model(model), "cpu")
    crops = [resize_square(cv2.imread(str(p)), r.in_size) for p in sorted(crops_dir.glob("*.png"))[:n]]
    r(crops[:batch])                                              # warm-up
    t = time.perf_counter()
    for i in range(0, len(crops), batch):
        r(crops[i:i + batch])
    return len(crops) / (time.perf_counter() - t)


def run_restore(model: str, inputs: Path, out: Path, extra: list[str]) -> tuple[dict, list[dict], float]:
    cmd = [sys.executable, "-m", "panini_cli", "restore", "-m", model, "-q", "--json", *extra, str(inputs), str(out)]
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode not in (0, 1):
        raise SystemExit(res.stderr[-2000:])
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return summary, recs, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="registry name or file (default: a small random model)")
    p.add_argument("--faces", type=int, default=12, help="aligned faces to use")
    p.add_argument("--photos", type=int, default=8, help="whole photos to use")
    p.add_argument("--batch-size", type=int, default=1)
    args = p.parse_args()
    aligned_src = SHARED / "data" / "faces_aligned"
    photos_src = SHARED / "data" / "whole_photos"
    if not aligned_src.exists():
        raise SystemExit(f"{aligned_src} not found: this benchmark needs ../shared/data")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or small_model(tmp / "small.safetensors")
        faces = tmp / "faces"
        faces.mkdir()
        for f in sorted(aligned_src.glob("*.png"))[:args.faces]:
            shutil.copy(f, faces / f.name)
        photos = tmp / "photos"
        photos.mkdir()
        for f in sorted(photos_src.glob("*.jpg"))[:args.photos]:
            shutil.copy(f, photos / f.name)
        bs = ["--batch-size", str(args.batch_size)]
        rate_model = model_only(model, faces, args.faces, args.batch_size)
        s_al, recs_al, wall_al = run_restore(model, faces, tmp / "out_aligned", ["--aligned", *bs])
        s_wh, recs_wh, wall_wh = run_restore(model, photos, tmp / "out_whole", bs)

    def share(recs, key):
        return sum(r.get("timings", {}).get(key, 0.0) for r in recs)

    model_al, model_wh = share(recs_al, "model"), share(recs_wh, "model")
    prep_wh = share(recs_wh, "decode") + share(recs_wh, "detect") + share(recs_wh, "align")
    print(f"model: {model}   batch size {args.batch_size}   (wall times include process start and model load)")
    print("case | files | faces | wall s | faces/s | model-only faces/s | model busy | (decode+detect+align)/model")
    print(f"model only | - | {args.faces} | - | {rate_model:.2f} | {rate_model:.2f} | 100% | -")
    print(f"restore --aligned | {s_al['done']} | {s_al['faces']} | {wall_al:.1f} | {s_al['faces'] / wall_al:.2f} | "
          f"{rate_model:.2f} | {model_al / wall_al:.0%} | {(share(recs_al, 'decode') + share(recs_al, 'align')) / max(model_al, 1e-9):.2f}")
    print(f"restore photos | {s_wh['done']} | {s_wh['faces']} | {wall_wh:.1f} | {s_wh['faces'] / wall_wh:.2f} | "
          f"{rate_model:.2f} | {model_wh / wall_wh:.0%} | {prep_wh / max(model_wh, 1e-9):.2f}")
    print("model busy = summed model time / wall time. Decode, detect and align run in worker threads "
          "ahead of the model, so their sum can exceed the time they add to the wall clock.")


if __name__ == "__main__":
    main()
