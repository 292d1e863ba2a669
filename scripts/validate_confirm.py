"""Choose the default `cnn`'s confirm cut (panini_cli.detectors.CNN_CONFIRM_CUT).

Run:  nice python scripts/validate_confirm.py            (about 5 min on 2 cores)

The default searches larger photos with the weights fine-tuned on degraded faces, from a
score of CNN_CANDIDATE_CUT, and keeps a find when its score plus dlib's weights' score
at the same place reaches the cut. This prints, for several cuts:
- recall on scripts/validate_detector.py's validation data (150 validation UTKFace chips
  per cell, in face-free backgrounds of the two validation clips, never trained on or
  benchmarked), and the face-free validation pieces with a detection;
- on the 38 shared whole photos, what the confirmed search finds beyond dlib's weights
  (the previous default; the only hands and ornaments here, so the test set of the
  benchmark's whole-photo check: look at each), and any face of dlib's it loses.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "scripts")]
import detect as bench                      # noqa: E402  (the benchmark's degradations and cases)
import validate_detector as vd              # noqa: E402

CUTS = (0.3, 0.5, 0.7, 0.9, 1.1)


def scored(det, images, gts) -> list[list[tuple[float, bool]]]:
    """Per image: (combined score, whether it is the face) of every detection."""
    found = det.boxes_many([cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im in images])
    return [[(r[4], max([bench.iou(r[:4], g) for g in gg], default=0) >= 0.4) for r in d] for d, gg in zip(found, gts)]


def main() -> None:
    from panini_cli.detectors import CnnDetector, make_detector

    det = make_detector("cnn", confirm_cut=-3.0)            # every candidate, with its combined score
    chips, negatives, backs = vd.validation_set(150, texture_kinds=6)
    res = {}
    for kind in ("old", "jpeg", "tiny"):
        for s in (30, 40, 50, 60, 80):
            cs = [bench.make_case(c, s, kind, True, backs, np.random.default_rng([s, len(kind), i]))
                  for i, c in enumerate(chips)]
            res[f"{kind} {s}"] = scored(det, [im for im, _ in cs], [[g] for _, g in cs])
    free = scored(det, negatives, [[]] * len(negatives))
    print(f"## Validation: {len(chips)} faces per cell in backgrounds, {len(negatives)} face-free pieces\n")
    print("| cut | " + " | ".join(res) + " | face-free pieces with a detection |\n" + "|---" * (len(res) + 2) + "|")
    for c in CUTS:
        cells = [f"{100 * np.mean([any(f and sc >= c for sc, f in r) for r in v]):.0f}" for v in res.values()]
        print(f"| {c} | " + " | ".join(cells) + f" | {sum(any(sc >= c for sc, _ in r) for r in free)} |")
    print(f"\nbest face-free score: {max([sc for r in free for sc, _ in r], default=float('nan')):.2f}")

    ref, extra, lost, total = CnnDetector(), [], {c: 0 for c in CUTS}, 0
    for p in sorted(bench.WHOLE.iterdir()):
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        d, k = det.boxes_many([rgb])[0], ref.boxes_many([rgb])[0]
        extra += [(r[4], p.name, tuple(int(v) for v in r[:4])) for r in d
                  if max([bench.iou(r[:4], kb) for kb in k[:, :4]], default=0) < 0.4]
        total += len(k)
        for c in CUTS:
            lost[c] += sum(max([bench.iou(kb, r[:4]) for r in d if r[4] >= c], default=0) < 0.4 for kb in k[:, :4])
    print(f"\n## The 38 whole photos: faces of dlib's weights ({total}) lost, by cut: {lost}\n")
    print("Finds beyond dlib's weights' own, best first (look at each):\n\n| score | photo | box |\n|---|---|---|")
    for sc, name, box in sorted(extra, reverse=True)[:15]:
        print(f"| {sc:.2f} | {name} | {box} |")


if __name__ == "__main__":
    main()
