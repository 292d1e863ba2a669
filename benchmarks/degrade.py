"""Throughput of the Eq. 10 degradation (1024 -> 512) and where its time goes.

Run:  python benchmarks/degrade.py [--n 32] [--jobs 1 2]

Why: training draws a fresh degradation per sample, so this CPU cost must stay well
below the network's step time. Images are the shared aligned faces resized to the
HQ size (synthetic test cards if ../shared is missing); parameters are drawn from the
default ranges, one seed per image, exactly as training does.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np

from panini_models.degradations import STAGES, DegradationRanges, degrade, degrade_batch

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces_aligned"


def load_images(n: int, size: int, faces_dir: Path) -> tuple[list[np.ndarray], str]:
    """n HQ images at size x size: real faces (cycled) if present, else synthetic."""
    faces = []
    for p in sorted(faces_dir.glob("*.png")) if faces_dir.is_dir() else []:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None and img.shape[0] == img.shape[1]:
            interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
            faces.append(cv2.resize(img, (size, size), interpolation=interp))
    if faces:
        return [faces[i % len(faces)] for i in range(n)], f"{len(faces)} faces from {faces_dir}"
    rng = np.random.default_rng(0)
    synth = []
    for _ in range(n):
        base = cv2.GaussianBlur(rng.standard_normal((size, size, 3)), (0, 0), 6) * 400 + 128
        detail = rng.standard_normal((size, size, 3)) * 12
        synth.append(np.clip(base + detail, 0, 255).astype(np.uint8))
    return synth, f"synthetic ({faces_dir} not found)"


def throughput(images, seeds, out_size: int, n_jobs: int, repeats: int) -> float:
    """Best-of-`repeats` images/s; one warm-up batch first so worker start-up is excluded."""
    degrade_batch(images[: max(2, n_jobs)], seeds[: max(2, n_jobs)], out_size=out_size, n_jobs=n_jobs)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        degrade_batch(images, seeds, out_size=out_size, n_jobs=n_jobs)
        best = max(best, len(images) / (time.perf_counter() - t0))
    return best


def stage_times(images, seeds, out_size: int) -> dict[str, float]:
    """Seconds per stage summed over the batch, in this process."""
    ranges, timings = DegradationRanges(), {}
    for img, seed in zip(images, seeds):
        rng = np.random.default_rng(seed)
        degrade(img, ranges.sample(rng), out_size=out_size, rng=rng, timings=timings)
    return timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="images per batch")
    ap.add_argument("--size", type=int, default=1024, help="HQ size")
    ap.add_argument("--out", type=int, default=512, help="LQ size")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="joblib worker counts")
    ap.add_argument("--repeats", type=int, default=2, help="timed batches per worker count")
    ap.add_argument("--faces", type=Path, default=FACES, help="folder of aligned face PNGs")
    args = ap.parse_args()

    images, source = load_images(args.n, args.size, args.faces)
    seeds = list(range(len(images)))
    print(f"images: {source}; {args.n} x {args.size}px -> {args.out}px; "
          f"CPUs: {os.cpu_count()}, OpenCV threads: {cv2.getNumThreads()}")

    print(f"\n{'workers':>8} | {'images/s':>9} | {'ms/image':>9}")
    print(f"{'-' * 8}-+-{'-' * 9}-+-{'-' * 9}")
    for j in args.jobs:
        ips = throughput(images, seeds, args.out, j, args.repeats)
        print(f"{j:>8} | {ips:>9.1f} | {1000 / ips:>9.1f}")

    t = stage_times(images, seeds, args.out)
    total = sum(t.values())
    print(f"\n{'stage':>8} | {'ms/image':>9} | {'share':>6}   (1 process, default ranges)")
    print(f"{'-' * 8}-+-{'-' * 9}-+-{'-' * 6}")
    for s in STAGES:
        v = t.get(s, 0.0)
        print(f"{s:>8} | {1000 * v / len(images):>9.2f} | {100 * v / total:>5.1f}%")
    print(f"{'total':>8} | {1000 * total / len(images):>9.2f} | {100.0:>5.1f}%")


if __name__ == "__main__":
    main()
