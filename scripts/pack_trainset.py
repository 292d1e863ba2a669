"""Pack UTKFace chips with their landmarks into one file, and cut FFHQ crops from it anywhere.

The GPU machine has no dlib and reaches no registry, and the device tool carries 64 MiB with
the code. So the landmarks are found HERE, once, and the chips travel as they are (their
JPEG bytes, 46 MiB); there, `cut` makes the FFHQ crops at any size with the project's one
crop function (panini_cli.faces.align_face, OpenCV only) in a few seconds:

    python scripts/pack_trainset.py pack ../shared/data/trainset/utkface .device_train/utkface.npz
    python scripts/pack_trainset.py cut .device_train/utkface.npz /tmp/utk256 --size 256 --workers 16

`pack` detects each chip's face exactly as scripts/align_faces.py does (dlib HOG, upsample 0,
mirror padding 0.25, 68 landmarks, the largest face) and leaves out the 300 faces held out of
training (benchmarks/heldout_utkface.txt) except `--val` of them (default: held-out faces
100-115, used neither by benchmarks/quality.py's faces 0-99 nor by the gate's calibration
faces 150-299), which are packed as the validation split. Chips without a detectable face
are listed in the file (`skipped`), not guessed.

`cut` writes OUT/train/NAME.png and OUT/val/NAME.png: for a chip, the same pixels that
`scripts/align_faces.py SRC OUT --size N` writes (the chips' black corners count as outside
the photo; tests/test_device_train.py checks the equality).

The .npz holds: names, split (0 train, 1 val), offsets (N+1) into blob (the chips' bytes),
lm5 (N, 5, 2) and box (N, 4) in chip pixels (float64), score, skipped; no pickles.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
from align_faces import EXTS, _inside_mask  # noqa: E402
from panini_cli.faces import DlibDetector, Face, align_face  # noqa: E402

HELDOUT = REPO / "benchmarks" / "heldout_utkface.txt"
VAL = "100:116"               # held-out faces [100, 116): validation during training


def _detect_chunk(paths: list[str]) -> list[tuple]:
    det = DlibDetector(upsample=0, pad=0.25)          # as scripts/align_faces.py
    rows = []
    for p in paths:
        data = Path(p).read_bytes()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            rows.append((p, None, "unreadable"))
            continue
        faces = det.detect(img)
        if not faces:
            rows.append((p, None, "no face found"))
            continue
        f = faces[0]
        rows.append((p, (data, np.asarray(f.landmarks5, np.float64), np.asarray(f.box, np.float64),
                         float(f.score)), ""))
    return rows


def pack(src: Path, out: Path, heldout: Path, val: str, workers: int, limit: int = 0) -> dict:
    held = heldout.read_text().split()
    lo, hi = (int(v) for v in val.split(":")) if val else (0, 0)
    val_names = set(held[lo:hi])
    excluded = set(held) - val_names
    paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in EXTS and p.is_file())
    paths = [p for p in paths if p.name not in excluded]
    if limit:
        paths = paths[:limit] + [p for p in paths[limit:] if p.name in val_names]
    from joblib import Parallel, delayed
    n_chunks = max(1, workers * 8)
    chunks = [[str(p) for p in paths[i::n_chunks]] for i in range(n_chunks)]
    t = time.perf_counter()
    results = Parallel(n_jobs=workers)(delayed(_detect_chunk)(c) for c in chunks if c)
    rows = sorted((r for chunk in results for r in chunk), key=lambda r: r[0])
    kept = [r for r in rows if r[1] is not None]
    skipped = [f"{Path(p).name}\t{why}" for p, found, why in rows if found is None]
    names = np.array([Path(p).name for p, _, _ in kept])
    blobs = [found[0] for _, found, _ in kept]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    arrays = {
        "names": names,
        "split": np.array([1 if n in val_names else 0 for n in names], np.uint8),
        "offsets": offsets,
        "blob": np.frombuffer(b"".join(blobs), np.uint8),
        "lm5": np.stack([found[1] for _, found, _ in kept]) if kept else np.zeros((0, 5, 2)),
        "box": np.stack([found[2] for _, found, _ in kept]) if kept else np.zeros((0, 4)),
        "score": np.array([found[3] for _, found, _ in kept], np.float64),
        "skipped": np.array(skipped if skipped else [""])[: len(skipped)],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)
    info = {"chips": len(paths), "packed": len(kept), "train": int((arrays["split"] == 0).sum()),
            "val": int(arrays["split"].sum()), "skipped": len(skipped), "excluded_heldout": len(excluded),
            "bytes": out.stat().st_size, "seconds": round(time.perf_counter() - t, 1)}
    return info


def load(npz: Path) -> dict:
    with np.load(npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _cut_chunk(npz: str, idx: list[int], out: str, size: int) -> int:
    cv2.setNumThreads(1)
    d = load(Path(npz))
    for i in idx:
        data = d["blob"][d["offsets"][i]:d["offsets"][i + 1]]
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
        face = Face(tuple(float(v) for v in d["box"][i]), float(d["score"][i]), d["lm5"][i])
        crop, _ = align_face(img, face, size, inside=_inside_mask(img))
        folder = Path(out) / ("val" if d["split"][i] else "train")
        name = folder / (str(d["names"][i]).split(".")[0] + ".png")
        tmp = name.with_suffix(".tmp.png")
        cv2.imwrite(str(tmp), crop, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        tmp.replace(name)
    return len(idx)


def cut(npz: Path, out: Path, size: int, workers: int, limit: int = 0) -> dict:
    with np.load(npz, allow_pickle=False) as z:
        n, split = len(z["names"]), z["split"]
    idx = list(range(n))
    if limit:
        idx = idx[:limit] + [i for i in idx[limit:] if split[i]]
    for sub in ("train", "val"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    n_chunks = max(1, workers * 4)
    chunks = [idx[i::n_chunks] for i in range(n_chunks)]
    if workers <= 1:
        done = sum(_cut_chunk(str(npz), c, str(out), size) for c in chunks if c)
    else:
        from joblib import Parallel, delayed
        done = sum(Parallel(n_jobs=workers)(delayed(_cut_chunk)(str(npz), c, str(out), size) for c in chunks if c))
    return {"crops": done, "train": int(sum(1 for i in idx if not split[i])), "val": int(sum(split[i] for i in idx)),
            "size": size, "seconds": round(time.perf_counter() - t, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="detect landmarks here and pack chips + landmarks into one .npz")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--heldout", type=Path, default=HELDOUT, help="names never packed (but --val)")
    p.add_argument("--val", default=VAL, help="held-out faces lo:hi packed as the validation split ('' none)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="first N chips only (tests)")
    c = sub.add_parser("cut", help="write FFHQ crops of a pack: OUT/train/*.png, OUT/val/*.png")
    c.add_argument("npz", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--size", type=int, default=256)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--limit", type=int, default=0)
    a = ap.parse_args()
    if a.cmd == "pack":
        info = pack(a.src, a.out, a.heldout, a.val, a.workers, a.limit)
        print(f"packed {info['packed']} of {info['chips']} chips ({info['train']} train, {info['val']} val; "
              f"{info['skipped']} without a detectable face; {info['excluded_heldout']} held-out faces left out) "
              f"-> {a.out} ({info['bytes'] / 2 ** 20:.1f} MiB, {info['seconds']} s)")
    else:
        info = cut(a.npz, a.out, a.size, a.workers, a.limit)
        print(f"cut {info['crops']} crops of {info['size']} px ({info['train']} train, {info['val']} val) "
              f"-> {a.out} in {info['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
