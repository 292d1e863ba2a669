"""Align a folder of face photos to FFHQ crops (the framing `panini restore` feeds the model).

Used to make the default model's training set from UTKFace's 200x200 chips:
    python scripts/align_faces.py ../shared/data/trainset/utkface DATA/utk128 --size 128
Each image: dlib HOG + 68 landmarks (the largest face), FFHQ crop, PNG. Where the FFHQ
square reaches outside the photo (UTKFace chips are much tighter than FFHQ crops), the
missing part is filled as FFHQ's own script does: mirrored, then blurred and faded to
the median colour with distance from the photo, so no mirrored eyes are learnt. Black
corners left by the chips' own rotation count as outside. Images without a detectable face are listed in
OUT/skipped.txt, not guessed. Chips are padded by mirroring before detection because
HOG misses faces that touch the image border.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from joblib import Parallel, delayed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from panini_cli.faces import DlibDetector, Face, align_face  # noqa: E402

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _inside_mask(img: np.ndarray) -> np.ndarray:
    """1 where the chip holds photo, 0 in near-black regions touching its border."""
    dark = (img.max(axis=2) < 12).astype(np.uint8)
    n, labels = cv2.connectedComponents(dark, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, edge[edge > 0]) & (dark > 0)
    return (~outside).astype(np.float32)


def _fill_outside(img: np.ndarray, face: Face, size: int) -> np.ndarray:
    crop, a = align_face(img, face, size)
    inside = cv2.warpAffine(_inside_mask(img), a[:2], (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    dist = cv2.distanceTransform((inside < 0.5).astype(np.uint8), cv2.DIST_L2, 5)
    m = np.clip(dist / (0.15 * size), 0, 1)[..., None]
    crop = crop.astype(np.float32)
    blurred = cv2.GaussianBlur(crop, (0, 0), 0.04 * size)
    crop += (blurred - crop) * np.clip(3 * m + (inside[..., None] < 0.5), 0, 1)
    median = np.median(crop[inside > 0.5], axis=0) if (inside > 0.5).any() else crop.mean((0, 1))
    crop += (median - crop) * m
    return np.clip(crop + 0.5, 0, 255).astype(np.uint8)


def _align_chunk(paths: list[Path], out: Path, size: int, pad: float) -> list[tuple[str, str]]:
    det = DlibDetector(upsample=0)
    skipped = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            skipped.append((p.name, "unreadable"))
            continue
        b = int(round(pad * max(img.shape[:2])))
        padded = cv2.copyMakeBorder(img, b, b, b, b, cv2.BORDER_REFLECT_101)
        faces = det.detect(padded)
        if not faces:
            skipped.append((p.name, "no face found"))
            continue
        f = faces[0]
        f = Face(f.box, f.score, f.landmarks5 - b, None)
        crop = _fill_outside(img, f, size)
        name = out / (p.name.split(".")[0] + ".png")
        tmp = name.with_suffix(".tmp.png")
        cv2.imwrite(str(tmp), crop)
        tmp.replace(name)
    return skipped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--pad", type=float, default=0.25, help="mirror padding before detection (fraction)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    a = ap.parse_args()
    paths = sorted(p for p in a.src.rglob("*") if p.suffix.lower() in EXTS)
    if a.limit:
        paths = paths[:a.limit]
    a.out.mkdir(parents=True, exist_ok=True)
    chunks = [paths[i::a.workers * 8] for i in range(a.workers * 8)]
    results = Parallel(n_jobs=a.workers)(delayed(_align_chunk)(c, a.out, a.size, a.pad) for c in chunks)
    skipped = sorted(s for r in results for s in r)
    (a.out / "skipped.txt").write_text("".join(f"{n}\t{why}\n" for n, why in skipped))
    print(f"{len(paths) - len(skipped)} aligned, {len(skipped)} skipped (see {a.out / 'skipped.txt'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
