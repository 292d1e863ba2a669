"""Training speed on this machine: iterations/s, samples/s, and data time against compute time.

Run:  python benchmarks/train.py [--steps 5] [--mfr-steps 2] [--threads 2] [--skip-mfr]

Why: the default model has to be trained here on a CPU, and a user planning a cluster
run wants to know what one step of the paper's configuration costs. Each row builds
the real trainer (RestoreTrainer / UDRLTrainer, random weights, no VGG file, so the
discriminator feature-matching term is on) over the shared UTKFace training faces
(synthetic faces if ../shared is missing), runs one warm-up step, then times steps.

"data s/step" is the time the step waited for its batch with num_workers=0, i.e. the
full cost of reading, resizing, degrading (Eq. 10) and flipping the batch in the
training process; "compute s/step" is the rest (forward, backward, optimiser, EMA).
With --workers N > 0 the data work moves to loader processes and overlaps compute.
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from panini_models.panini import PRESETS, count_parameters
from panini_models.training.data import list_images
from panini_models.training.dist import DistInfo
from panini_models.training.loop import RestoreTrainer
from panini_models.training.state import load_config
from panini_models.training.udrl import UDRLTrainer

TRAINSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trainset" / "utkface"


def faces(n: int) -> tuple[list[Path], str]:
    if TRAINSET.is_dir():
        return list_images(TRAINSET)[:n], f"{n} UTKFace faces from {TRAINSET}"
    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for i in range(n):
        img = cv2.resize(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), (200, 200), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{i}.png"), img)
    return list_images(folder), f"synthetic ({TRAINSET} not found)"


def time_steps(trainer, steps: int) -> dict:
    trainer.train_step()                                   # warm-up (allocations, first batch)
    rows = []
    for _ in range(steps):
        t0 = time.perf_counter()
        values = trainer.train_step()
        rows.append((time.perf_counter() - t0, values["data_time"]))
    step = float(np.median([r[0] for r in rows]))
    data = float(np.median([r[1] for r in rows]))
    return {"step": step, "data": data, "compute": step - data, "it/s": 1 / step,
            "samples/s": trainer.samples_per_step / step, "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def restore_row(task: str, batch: int, steps: int, files, workers: int) -> dict:
    cfg = load_config("restore", None, [f"task={task}", f"batch_size={batch}", f"num_workers={workers}",
                                        "total_steps=1000", "val_count=0"])
    trainer = RestoreTrainer(cfg, files, [], DistInfo())
    params = count_parameters(trainer.G) + count_parameters(trainer.D)
    out = time_steps(trainer, steps)
    out.update(name=f"restore {task} ({trainer.model_config.in_size}->{trainer.model_config.out_size})",
               batch=batch, params=params)
    return out


def dre_row(preset: str, batch: int, steps: int, files, workers: int) -> dict:
    cfg = load_config("dre", None, [f"preset={preset}", f"batch_size={batch}", f"num_workers={workers}",
                                    "total_steps=1000", "val_count=0"])
    trainer = UDRLTrainer(cfg, files, [], DistInfo())
    out = time_steps(trainer, steps)
    pc = PRESETS[preset]
    out.update(name=f"dre {preset} (UDRL, LQ {pc.in_size})", batch=batch,
               params=count_parameters(trainer.moco.encoder_q))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps for the small configs")
    p.add_argument("--mfr-steps", type=int, default=2, help="timed steps for the paper's MFR config")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--skip-mfr", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    files, source = faces(64)
    print(f"torch {torch.__version__}, {args.threads} threads, data: {source}, loader workers {args.workers}")
    rows = [restore_row("small", 1, args.steps, files, args.workers),
            restore_row("small", 4, args.steps, files, args.workers),
            dre_row("small", 32, args.steps, files, args.workers)]
    if not args.skip_mfr:
        rows.append(restore_row("mfr", 1, args.mfr_steps, files, args.workers))
    head = ("config", "batch", "params", "s/step", "it/s", "samples/s", "data s/step", "compute s/step",
            "data share", "peak RSS GB")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['name']} | {r['batch']} | {r['params'] / 1e6:.2f} M | {r['step']:.3f} | {r['it/s']:.3f} | "
              f"{r['samples/s']:.2f} | {r['data']:.4f} | {r['compute']:.3f} | {r['data'] / r['step']:.1%} | "
              f"{r['rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
