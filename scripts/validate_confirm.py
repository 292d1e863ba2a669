"""Choose the default `cnn`'s confirm cut and head rule (panini_cli/confirm.py).

Run:  nice python scripts/validate_confirm.py [--weights W.safetensors] [--no-photos]
      (about 10 min on 2 cores; --weights: other fine-tuned weights as the proposer;
      --no-photos: choose without looking at the benchmark's whole photos)

The default searches larger photos with the weights fine-tuned on degraded faces, from a
score of CNN_CANDIDATE_CUT, and keeps a find when its score plus dlib's weights' score
at the same place reaches the cut and it is not on a larger, higher-scoring find's head
(confirm.off_heads). This prints, for several cuts, with and without that head rule:
- recall on scripts/validate_detector.py's validation data (150 validation UTKFace chips
  per cell, in face-free backgrounds of the two validation clips, never trained on or
  benchmarked), and the face-free validation pieces with a detection;
- hard negatives mined from images the benchmark never searches (mined_hard_negatives):
  every find, at any score, off the faces of the shared testsets' and aligned photos
  (their ears, cheeks, hands, hair, earrings) and of 8 frames of each shared clip, each
  clean and made old, at its size and at half; look at the best ones (a real face the
  masks missed goes in REAL_FACES);
- on the 38 shared whole photos, what the confirmed search finds beyond dlib's weights
  (the previous default; the benchmark's own whole-photo check, printed to look at, not
  to choose by), and any face of dlib's it loses.
"""
from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "scripts")]
import detect as bench                      # noqa: E402  (the benchmark's degradations and cases)
import validate_detector as vd              # noqa: E402
from panini_cli.confirm import kept         # noqa: E402

CUTS = (0.3, 0.5, 0.6, 0.7, 0.9, 1.1)
CLIP_FRAMES = 8
# Faces among the mined finds that the masks miss, looked at: (image, scale) -> box.
REAL_FACES = {("facerec_short_hamilton_clip.mp4#0", 0.5): (255, 17, 291, 52)}     # a singer


def found(dets: np.ndarray, gt, cut: float, parts: bool) -> bool:
    return any(bench.iou(r[:4], gt) >= 0.4 for r in dets[kept(dets, cut, parts)])


def mined_sources():
    """(name, BGR image): the testsets' and aligned photos, CLIP_FRAMES frames of each clip."""
    for p in sorted((bench.DATA / "testsets").rglob("*.*")) + sorted(bench.ALIGNED.iterdir()):
        if p.suffix.lower() in (".png", ".jpg"):
            yield p.name, cv2.imread(str(p))
    from panini_models.mmod_crops import spread_frames

    for v in sorted((bench.DATA / "video").glob("*.mp4")):
        for k, frame in spread_frames(v, CLIP_FRAMES):
            yield f"{v.name}#{k}", frame


def mined_hard_negatives(det):
    """Finds of `det` off the faces that dlib's weights (cut -1) or HOG see in the clean
    image (centre outside, IoU < 0.2): ((combined score, image, scale, kind, box) of each,
    best first; every search's candidates; which of them are off the faces; those faces)."""
    from panini_cli.detectors import CnnDetector, HogDetector

    ref, hog, out, searches, offs, faces = CnnDetector(threshold=-1.0), HogDetector(), [], [], [], []
    for name, bgr in mined_sources():
        for scale in (1.0, 0.5):
            im = bgr if scale == 1 else cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            known = [d[:4] for d in ref.boxes_many([cv2.cvtColor(im, cv2.COLOR_BGR2RGB)])[0]]
            known += [f.box for f in hog.detect(im)] + ([REAL_FACES[name, scale]] if (name, scale) in REAL_FACES else [])
            rng = np.random.default_rng(zlib.crc32(f"{name}{scale}".encode()))
            for kind in ("clean", "old"):
                x = im if kind == "clean" else bench.degrade(im, "old", rng)
                dets = det.boxes_many([cv2.cvtColor(x, cv2.COLOR_BGR2RGB)])[0]
                off = np.array([max([bench.iou(d[:4], k) for k in known], default=0) < 0.2 and not any(
                    k[0] <= (d[0] + d[2]) / 2 <= k[2] and k[1] <= (d[1] + d[3]) / 2 <= k[3] for k in known)
                    for d in dets], bool).reshape(-1)
                searches.append(dets)
                offs.append(off)
                faces.append(known)
                out += [(float(d[4]), name, scale, kind, tuple(int(v) for v in d[:4])) for d in dets[off]]
    return sorted(out, reverse=True), searches, offs, faces


def main() -> None:
    from panini_cli.confirm import CNN_CANDIDATE_CUT
    from panini_cli.detectors import CnnDetector, make_detector

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="fine-tuned weights to propose with (default: the bundled ones)")
    ap.add_argument("--no-photos", action="store_true", help="skip the 38 whole photos (the test)")
    args = ap.parse_args()
    extra = {} if args.weights is None else dict(weights=args.weights, crop_weights=args.weights,
                                                 confirm_weights="dlib", threshold=CNN_CANDIDATE_CUT)
    det = make_detector("cnn", confirm_cut=-3.0, drop_parts=False, **extra)   # every candidate, combined scores
    chips, negatives, backs = vd.validation_set(150, texture_kinds=6)
    res = {}
    for kind in ("old", "jpeg", "tiny"):
        for s in (30, 40, 50, 60, 80):
            cs = [bench.make_case(c, s, kind, True, backs, np.random.default_rng([s, len(kind), i]))
                  for i, c in enumerate(chips)]
            res[f"{kind} {s}"] = list(zip(det.boxes_many([cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im, _ in cs]),
                                          [g for _, g in cs]))
    free = det.boxes_many([cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im in negatives])
    mined = mined_hard_negatives(det)
    print(f"## Validation: {len(chips)} faces per cell in backgrounds, {len(negatives)} face-free pieces; "
          f"{len(mined[0])} mined hard negatives (finds off the faces)\n")
    print("| cut | head rule | " + " | ".join(res) + " | face-free pieces with a find | mined hard negatives kept "
          "| their images' faces found |\n" + "|---" * (len(res) + 5) + "|")
    for c in CUTS:
        for parts in (False, True):
            cells = [f"{100 * np.mean([found(d, g, c, parts) for d, g in v]):.0f}" for v in res.values()]
            hard = sum(int((kept(d, c, parts) & off).sum()) for d, off in zip(*mined[1:3]))
            faces = sum(found(d, k, c, parts) for d, kk in zip(mined[1], mined[3]) for k in kk)
            print(f"| {c} | {'yes' if parts else 'no'} | " + " | ".join(cells)
                  + f" | {sum(bool(kept(d, c, parts).any()) for d in free)} | {hard} | {faces} |")
    print(f"\nbest face-free score: {max([d[:, 4].max() for d in free if len(d)], default=float('nan')):.2f}")
    print("\nbest mined hard negatives (look at each):\n\n| score | image | scale | kind | box |\n|---|---|---|---|---|")
    for m in mined[0][:12]:
        print("| {:.2f} | {} | {} | {} | {} |".format(*m))
    if args.no_photos:
        return

    ref, extra, total = CnnDetector(), [], 0
    lost = {(c, parts): 0 for c in CUTS for parts in (False, True)}
    beyond = dict.fromkeys(lost, 0)
    for p in sorted(bench.WHOLE.iterdir()):
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        d, k = det.boxes_many([rgb])[0], ref.boxes_many([rgb])[0]
        new = np.array([max([bench.iou(r[:4], kb) for kb in k[:, :4]], default=0) < 0.4 for r in d], bool).reshape(-1)
        extra += [(r[4], p.name, tuple(int(v) for v in r[:4]), bool(kept(d, r[4], True)[j]))
                  for j, r in enumerate(d) if new[j]]
        total += len(k)
        for c, parts in lost:
            keep = d[kept(d, c, parts)]
            lost[c, parts] += sum(max([bench.iou(kb, r[:4]) for r in keep], default=0) < 0.4 for kb in k[:, :4])
            beyond[c, parts] += int((kept(d, c, parts) & new).sum())
    print(f"\n## The 38 whole photos: of dlib's weights' {total} faces, lost / finds beyond them kept\n")
    print("| cut | head rule | lost | beyond |\n|---|---|---|---|")
    for (c, parts), n in lost.items():
        print(f"| {c} | {'yes' if parts else 'no'} | {n} | {beyond[c, parts]} |")
    print("\nFinds beyond dlib's weights' own, best first (look at each):\n\n| score | photo | box | "
          "kept by the head rule at its score |\n|---|---|---|---|")
    for sc, name, box, keep in sorted(extra, reverse=True)[:15]:
        print(f"| {sc:.2f} | {name} | {box} | {'yes' if keep else 'no'} |")


if __name__ == "__main__":
    main()
