"""Align a folder of face photos to FFHQ crops (the framing `panini restore` feeds the model).

Used to make the default model's training set from UTKFace's 200x200 chips:
    python scripts/align_faces.py ../shared/data/trainset/utkface DATA/utk128 --size 128
Each image: dlib HOG + 68 landmarks (the largest face), FFHQ crop, PNG. Where the FFHQ
square reaches outside the photo (UTKFace chips are much tighter than FFHQ crops), the
missing part is filled by faces.align_face, the crop `restore` cuts too: mirrored, then
blurred and faded to the median colour with distance from the photo, so no mirrored eyes
are learnt. Black corners left by the chips' own rotation count as outside. Images without a detectable face are listed in
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
from panini_cli.faces import DlibDetector, align_face  # noqa: E402

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _inside_mask(img: np.ndarray) -> np.ndarray:
    """1 where the chip holds photo, 0 in near-black regions touching its border."""
    dark = (img.max(axis=2) < 12).astype(np.uint8)
    n, labels = cv2.connectedComponents(dark, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, edge[edge > 0]) & (dark > 0)
    return (~outside).astype(np.float32)


def _align_chunk(paths: list[Path], out: Path, size: int, pad: float) -> list[tuple[str, str]]:
    det = DlibDetector(upsample=0, pad=pad)
    skipped = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            skipped.append((p.name, "unreadable"))
            continue
        faces = det.detect(img)
        if not faces:
            skipped.append((p.name, "no face found"))
            continue
        crop, _ = align_face(img, faces[0], size, inside=_inside_mask(img))
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
