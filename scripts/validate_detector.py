"""Validate fine-tuned face-detector weights against dlib's, on data neither trains nor
tests on: the 300 validation UTKFace chips of scripts/finetune_detector.py, backgrounds
and face-free pieces from the two validation clips (faces masked), fresh textures.

Run:  nice python scripts/validate_detector.py runs/mmod/last.safetensors [more.safetensors ...]
Prints, per weight file: recall (% of faces whose box is found with IoU >= 0.4 at the
cut) by kind and size, and the highest scores on face-free pieces, so a cut can be set
with a margin before the benchmark (benchmarks/detect.py) is run once.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "scripts")]
import detect as bench                      # noqa: E402  (the benchmark's degradations and cases)
import finetune_detector as ft              # noqa: E402


def validation_set(n: int | None = None, texture_kinds: int = 4):
    """(validation chips, face-free negatives, backgrounds for make_case): the first n
    validation UTKFace chips, 90 face-free pieces of the two validation clips (faces masked)
    and n // 3 textures, each also made old and JPEG q15; the first 60 pieces as backgrounds."""
    from panini_models.mmod_crops import video_backgrounds

    _, val_names = ft.split_chips()
    chips = [cv2.imread(str(ft.UTK / name)) for name in val_names[:n]]
    t = time.time()
    bgs = video_backgrounds(ft.split_clips()[1], 12, ft.face_masker())
    print(f"backgrounds: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    rng = np.random.default_rng(5)
    pieces = face_free_pieces(bgs, rng, 90, texture_kinds)
    negatives = pieces + [bench.degrade(p, k, rng) for p in pieces for k in ("old", "jpeg")]
    return chips, negatives, list(enumerate(pieces[:60]))


def face_free_pieces(bgs, rng, n: int, kinds: int = 4) -> list[np.ndarray]:
    from panini_models.mmod_crops import background_piece, synthetic_texture
    out = [background_piece(bgs, rng, int(rng.integers(160, 480)), kinds) for _ in range(n)]
    out += [synthetic_texture(rng, 256, kinds) for _ in range(n // 3)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="*", type=Path)
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--cut", type=float, default=-0.4)
    ap.add_argument("--texture-kinds", type=int, default=4, choices=[4, 6],
                    help="synthetic face-free kinds (6: also hand- and petal-like shapes)")
    ap.add_argument("--no-dlib", action="store_true", help="leave out dlib's own weights (the baseline)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[30, 40, 50, 60])
    ap.add_argument("--kinds", nargs="+", default=["old", "jpeg"], choices=["old", "jpeg", "tiny"])
    args = ap.parse_args()
    from panini_cli.detectors import CnnDetector

    chips, negatives, backs = validation_set(args.n, args.texture_kinds)
    cases = {(kind, s): [bench.make_case(c, s, kind, True, backs, np.random.default_rng([s, len(kind), i]))
                         for i, c in enumerate(chips)] for kind in args.kinds for s in args.sizes}
    low = min(args.cut, -1.2)          # scores below are not needed; a lower cut makes NMS slow
    dets = ({} if args.no_dlib else {"dlib": CnnDetector(threshold=low, weights="dlib")}) | {str(w): CnnDetector(threshold=low, weights=w) for w in args.weights}
    print(f"{len(chips)} validation faces per cell, {len(negatives)} face-free pieces. Recall at the cut "
          f"{args.cut}, then 0.1 and 0.3 above the best face-free score\n")
    print("| weights | cut | " + " | ".join(f"{k} {s}" for k, s in cases) + " | face-free: best | 2nd | > cut |")
    print("|---" * (len(cases) + 5) + "|")
    for name, det in dets.items():
        t = time.time()
        found = {}
        for key, cs in cases.items():
            hits = det.boxes_many([cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im, _ in cs])
            found[key] = np.array([max([s for *b, s in d if bench.iou(b, gt) >= 0.4], default=low)
                                   for (_, gt), d in zip(cs, hits)])
        best = np.sort([d[:, 4].max() if len(d) else low for d in
                        det.boxes_many([cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im in negatives])])[::-1]
        print(f"{name}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        label = Path(name).parent.name + "/" + Path(name).stem if name != "dlib" else name
        for cut in (args.cut, best[0] + 0.1, best[0] + 0.3):
            cells = [f"{100 * (f > cut).mean():.0f}" for f in found.values()]
            print(f"| {label} | {cut:.2f} | " + " | ".join(cells)
                  + f" | {best[0]:.2f} | {best[1]:.2f} | {int((best > cut).sum())} |", flush=True)

if __name__ == "__main__":
    main()
