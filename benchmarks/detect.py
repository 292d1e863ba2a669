"""Face detection: dlib HOG against the torch MMOD CNN (panini_cli/detectors.py).

Run:  nice python benchmarks/detect.py [--n 100] [--sizes 30 40 50 60 80 100]
          [--detectors hog cnn cnn-fp32 cnn-min40-t0 ...] [--only time ffhq fp recall]
      (detector names: hog | cnn, then options: -pad, -minN, -tN (threshold -N/10), -t0,
      -nN (pyramid), -fp32 / -bf16, -degraded (the weights fine-tuned on degraded faces), -wN (the
      N-th of --weights FILE ...);
      see detector_options)
      nice python benchmarks/detect.py --fit      # measure the box constants of detectors.py
      python benchmarks/detect.py --only time --device cuda --landmarks 5   # the GPU (scripts/device_check.sh)

Prints markdown tables:
- time per whole photo (the 38 shared photos, landmarks included, detectors interleaved
  photo by photo so they share the machine's noise; wall and process CPU time, ratios),
  and photos/s with all photos in one batched call;
- detections on the whole photos where the detectors disagree, and the astronaut's boxes;
- FFHQ crop error: each FFHQ-aligned HQ crop (gpen_ffhq_*, barbershop_*, diffpir_*,
  ddnm_*, psp_*, restyle_*) resized to S px and centred in a grey 1.5 S canvas is
  detected again; error = mean distance of the 4 corners of the recovered FFHQ quad
  (faces.ffhq_quad of the face nearest the centre) from the crop's own corners, in % of S;
- false positives on face-free images (photo corners checked by eye, synthetic textures);
- recall on degraded held-out UTKFace faces (benchmarks/heldout_utkface.txt; never used in
  training), by kind and size, in a face-free background 3x their size or as tight crops.

Face size = side of the UTKFace chip as drawn (the chips are tight face crops: on clean
chips dlib's HOG box is 0.94 of the side, the MMOD box 0.99). A face counts as found when
a detection overlaps the chip's square with IoU >= 0.4; any other detection is an FP.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PANINI_SHARED", REPO.parent / "shared")) / "data"
UTK, WHOLE, ALIGNED = DATA / "trainset" / "utkface", DATA / "whole_photos", DATA / "faces_aligned"
HELDOUT = REPO / "benchmarks" / "heldout_utkface.txt"
FFHQ_PREFIXES = ("gpen_ffhq_", "barbershop_", "diffpir_", "ddnm_", "psp_", "restyle_")

# Corner squares (side = a third of the shorter side) of the whole photos that hold no
# face or part of one, checked by eye on contact sheets; chosen by position, not by any
# detector, so neither detector's false positives were screened out.
FACE_FREE_CORNERS = {
    "barbershop_unprocessed_90.jpg": "tl bl br", "codeformer_whole_00.jpg": "bl br",
    "codeformer_whole_01.jpg": "bl br", "codeformer_whole_02.png": "bl br",
    "codeformer_whole_03.jpg": "tr bl br", "codeformer_whole_04.jpg": "tl tr bl br",
    "codeformer_whole_05.jpg": "tl bl br", "deepface_couple.jpg": "bl br",
    "deepface_selfie_many_people.jpg": "tl", "dlib_2007_007763.jpg": "tl bl br",
    "dlib_2008_001009.jpg": "tl tr bl br", "dlib_2008_001322.jpg": "tl tr bl br",
    "dlib_2008_002079.jpg": "tl bl br", "dlib_2008_002470.jpg": "tl tr bl br",
    "dlib_2008_002506.jpg": "bl br", "dlib_2008_004176.jpg": "bl br",
    "dlib_2008_007676.jpg": "tl tr bl br", "facealignment_aflw_test.jpg": "tl tr br",
    "facerec_biden.jpg": "tl bl br", "facerec_kit_with_rose.jpg": "bl br",
    "facerec_lin_manuel_miranda.png": "tl bl br", "facerec_obama_1080p.jpg": "tl tr bl br",
    "facerec_obama_240p.jpg": "tl tr bl br", "facerec_obama_480p.jpg": "tl tr bl br",
    "facerec_obama_and_biden.jpg": "tl tr bl", "facerec_two_people.jpg": "tl bl br",
    "gfpgan_whole_00.jpg": "tl bl br", "gfpgan_whole_10045.png": "tr bl br",
    "gfpgan_whole_Blake_Lively.jpg": "tl bl", "gpen_Solvay_conference_1927.png": "bl br",
    "gpen_selfie_20180716.jpg": "tl tr bl br", "gpen_selfie_20201210.jpg": "tr br",
    "liveportrait_s1.jpg": "bl br", "liveportrait_s11.jpg": "tr bl br",
    "liveportrait_s2.jpg": "tl tr bl br", "psfrgan_test_hzgg.jpg": "br",
    "skimage_astronaut.png": "tr bl br",     # br holds the mission patch
}


def heldout_names(n: int) -> list[str]:
    """The lead's list of held-out chips (or, until it exists, the first names)."""
    if HELDOUT.is_file():
        names = [s.strip() for s in HELDOUT.read_text().splitlines() if s.strip()]
    else:
        print(f"note: {HELDOUT} not found, using the first 300 UTKFace names", file=sys.stderr)
        names = sorted(os.listdir(UTK))[:300]
    return names[:n]


def face_free_images() -> list[tuple[str, np.ndarray]]:
    """Photo corners without faces, plus synthetic textures (noise, stripes, checks, gradients)."""
    out = []
    for name, corners in FACE_FREE_CORNERS.items():
        img = cv2.imread(str(WHOLE / name))
        h, w = img.shape[:2]
        c = min(h, w) // 3
        at = {"tl": (0, 0), "tr": (w - c, 0), "bl": (0, h - c), "br": (w - c, h - c)}
        for k in corners.split():
            x, y = at[k]
            out.append((f"{name}:{k}", img[y:y + c, x:x + c].copy()))
    rng = np.random.default_rng(7)
    for i in range(24):
        s = 256
        kind = ("noise", "blobs", "stripes", "checks", "gradient", "rings")[i % 6]
        yy, xx = np.mgrid[0:s, 0:s] / s
        if kind == "noise":
            img = rng.integers(0, 256, (s, s, 3))
        elif kind == "blobs":
            img = cv2.GaussianBlur(rng.standard_normal((s, s, 3)), (0, 0), 3 + i) * 600 + 128
        elif kind == "stripes":
            wave = np.sin(2 * np.pi * (xx * np.cos(i) + yy * np.sin(i)) * (4 + i))
            img = (wave * 100 + 128)[..., None] * [1, 0.8, 0.6]
        elif kind == "checks":
            img = (((xx * (3 + i // 6) // 1 + yy * (3 + i // 6) // 1) % 2) * 180 + 40)[..., None] * np.ones(3)
        elif kind == "gradient":
            img = np.stack([xx * 255, yy * 255, (1 - xx) * 200], -1)
        else:
            img = (np.cos(np.hypot(xx - 0.5, yy - 0.5) * (20 + 3 * i)) * 90 + 128)[..., None] * [0.7, 0.9, 1]
        out.append((f"synthetic_{kind}_{i}", np.clip(img, 0, 255).astype(np.uint8)))
    return out


# ---------------------------------------------------------------- degraded faces
def jpeg(img: np.ndarray, q: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)


def degrade(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The whole picture, as an old photo ('old': blur, x3 down and up, noise, JPEG 30),
    a small clean one ('tiny': nothing more) or a heavily compressed one ('jpeg': q 15)."""
    if kind == "tiny":
        return img
    if kind == "jpeg":
        return jpeg(img, 15)
    h, w = img.shape[:2]
    x = cv2.GaussianBlur(img, (0, 0), 1.0)
    x = cv2.resize(x, (max(1, round(w / 3)), max(1, round(h / 3))), interpolation=cv2.INTER_AREA)
    x = cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    x = np.clip(x + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)
    return jpeg(x, 30)


def make_case(chip: np.ndarray, size: int, kind: str, canvas: bool, backgrounds, rng) -> tuple[np.ndarray, tuple]:
    """(image, face square x0, y0, x1, y1): the chip drawn at `size` px, alone ('tight') or
    in a face-free background 3x its size (at least 160 px) at a random place, then degraded."""
    face = cv2.resize(chip, (size, size), interpolation=cv2.INTER_AREA)
    if not canvas:
        return degrade(face, kind, rng), (0, 0, size - 1, size - 1)
    side = max(160, 3 * size)
    bg = backgrounds[rng.integers(len(backgrounds))][1]
    img = cv2.resize(bg, (side, side), interpolation=cv2.INTER_AREA if bg.shape[0] > side else cv2.INTER_LINEAR)
    m = size // 4
    x0, y0 = (int(rng.integers(m, side - size - m + 1)) for _ in range(2))
    img[y0:y0 + size, x0:x0 + size] = face
    return degrade(img, kind, rng), (x0, y0, x0 + size - 1, y0 + size - 1)


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if w <= 0 or h <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
    return w * h / (area(a) + area(b) - w * h)


# ---------------------------------------------------------------- box mapping and FFHQ crops
def fit_boxes(n_chips: int = 300) -> None:
    """Measure the constants of panini_cli/detectors.py on faces that are not held out:
    UTKFace chips outside the held-out list (on a grey canvas twice their size) and the
    whole photos (longer side at most 1024 px).

    MMOD_TO_HOG: on faces both detectors find, (HOG centre - MMOD centre) / MMOD side in x
    and y, and HOG side / MMOD side. Means, not medians: both boxes come from pyramids with
    ~1.2x steps, so the side ratio is bimodal (~0.91 or ~1.09) and its median jumps.
    LANDMARKS_TO_HOG: HOG box from the 68 landmarks predicted on it (centroid, RMS radius)."""
    import dlib

    from panini_cli.detectors import CnnDetector
    from panini_cli.faces import find_predictor

    held = set(heldout_names(10 ** 6))
    names = [n for n in sorted(os.listdir(UTK)) if n not in held]
    names = names[:: max(1, len(names) // n_chips)][:n_chips]
    images = [cv2.copyMakeBorder(cv2.imread(str(UTK / n)), 100, 100, 100, 100, cv2.BORDER_CONSTANT, value=(128,) * 3)
              for n in names]
    for p in sorted(WHOLE.iterdir()):
        img = cv2.imread(str(p))
        f = min(1.0, 1024 / max(img.shape[:2]))
        images.append(cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else img)
    hog, cnn = dlib.get_frontal_face_detector(), CnnDetector(min_face=40, pad=0)
    shape = dlib.shape_predictor(str(find_predictor("68")))
    pairs, marks = [], []
    for img in images:
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        rects = list(hog(rgb, 1))
        hb = [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
        for r, h in zip(rects, hb):
            pts = np.array([(q.x, q.y) for q in shape(rgb, r).parts()], np.float64)
            c = pts.mean(0)
            rad = np.sqrt(((pts - c) ** 2).sum(1).mean())
            marks.append((((h[0] + h[2]) / 2 - c[0]) / rad, ((h[1] + h[3]) / 2 - c[1]) / rad,
                          np.log((h[2] - h[0] + h[3] - h[1]) / 2 + 1) - np.log(rad)))
        for m in cnn.boxes_many([rgb])[0]:
            best = max(hb, key=lambda h: iou(h, m[:4]), default=None)
            if best is not None and iou(best, m[:4]) > 0.3:
                ms = (m[2] - m[0] + m[3] - m[1]) / 2 + 1
                hs = (best[2] - best[0] + best[3] - best[1]) / 2 + 1
                pairs.append((((best[0] + best[2]) - (m[0] + m[2])) / 2 / ms,
                              ((best[1] + best[3]) - (m[1] + m[3])) / 2 / ms, np.log(hs / ms)))
    for title, rows in ((f"MMOD_TO_HOG ({len(pairs)} faces found by both, {len(images)} images)", pairs),
                        (f"LANDMARKS_TO_HOG ({len(marks)} HOG faces)", marks)):
        rows = np.array(rows)
        mean, med = rows.mean(0), np.median(rows, 0)
        sem = rows.std(0) / np.sqrt(len(rows))
        print(f"{title}: ({mean[0]:.4f}, {mean[1]:.4f}, {np.exp(mean[2]):.4f})   "
              f"+- ({sem[0]:.4f}, {sem[1]:.4f}, {sem[2]:.4f} in log); "
              f"medians ({med[0]:.4f}, {med[1]:.4f}, {np.exp(med[2]):.4f})")


def ffhq_faces(limit: int | None = None, size: int = 512) -> list[tuple[str, np.ndarray, int]]:
    """The FFHQ-aligned HQ crops at `size` px, each centred in a grey canvas 1.5x larger:
    (name, canvas, offset of the crop)."""
    out = []
    for p in sorted(ALIGNED.iterdir()):
        if p.name.startswith(FFHQ_PREFIXES):
            img = cv2.imread(str(p))
            interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
            img = cv2.resize(img, (size, size), interpolation=interp)
            b = size // 4
            out.append((p.name, cv2.copyMakeBorder(img, b, b, b, b, cv2.BORDER_CONSTANT, value=(128,) * 3), b))
    return out[:limit]


def ffhq_crop_error(face, offset: int, size: int) -> float:
    """Mean distance of the recovered FFHQ quad's corners from the crop's own corners, in %
    of the crop side (the crop is already FFHQ-aligned, so its true quad is itself)."""
    from panini_cli.faces import ffhq_quad

    q = ffhq_quad(face.landmarks5)                    # TL, BL, BR, TR
    lo, hi = offset - 0.5, offset + size - 0.5
    true = np.array([[lo, lo], [lo, hi], [hi, hi], [hi, lo]])
    return float(np.linalg.norm(q - true, axis=1).mean() / size * 100)


# ---------------------------------------------------------------- the tables
WEIGHT_FILES: list[str] = []          # --weights: detector weight files, named w0, w1, ... in detector names


def detector_options(name: str) -> tuple[str, dict]:
    """'cnn-min30-t04-n5-fp32' -> ('cnn', {min_face: 30, threshold: -0.4, pyramid: 5,
    precision: 'fp32'}); 'hog-pad' -> ('hog', {pad: 0.1}). Tokens: minN (min_face), tN
    (threshold -N/10), t0 (threshold 0), nN (pyramid), fp32 / bf16 (precision), pad,
    dlib / degraded (which weights, unconfirmed: 'cnn-dlib' was the default until the
    confirmed search, 'cnn-degraded' is the CLI's), nocrop (face crops searched with those weights too,
    not with detectors.CNN_CROP_WEIGHTS), wN (the N-th --weights file)."""
    kind, *tokens = name.split("-")
    opts: dict = {}
    for t in tokens:
        if t == "pad":
            opts["pad"] = 0.1                                         # faces.DlibDetector's mirror pad
        elif t in ("dlib", "degraded"):
            opts["weights"] = t                                       # dlib's own / fine-tuned weights,
            opts["confirm_weights"] = None                            # alone (cnn-degraded: the CLI's)
        elif t == "nocrop":
            opts["crop_weights"] = None                               # face crops with `weights` too
        elif t.startswith("w") and t[1:].isdigit():
            opts["weights"] = WEIGHT_FILES[int(t[1:])]                # --weights FILE ... (w0, w1, ...)
        elif t in ("fp32", "bf16"):
            opts["precision"] = t
        elif t.startswith("min"):
            opts["min_face"] = float(t[3:])
        elif t.startswith("t") and t[1:].isdigit():
            opts["threshold"] = -int(t[1:]) / 10
        elif t.startswith("n") and t[1:].isdigit():
            opts["pyramid"] = int(t[1:])
        else:
            raise ValueError(f"unknown detector token {t!r} in {name!r}")
    return kind, opts


def detectors(names: list[str], device: str = "cpu", landmarks: str = "68") -> dict:
    """The named detectors; the CNN ones on `device` (HOG runs on the CPU)."""
    from panini_cli.detectors import make_detector

    out = {}
    for n in names:
        kind, opts = detector_options(n)
        out[n] = make_detector(kind, landmarks, device, **opts)
    return out


def recall_tables(dets: dict, n: int, sizes: list[int]) -> None:
    chips = [cv2.imread(str(UTK / name)) for name in heldout_names(n)]
    bgs = [im for name, im in face_free_images() if not name.startswith("synthetic")]
    bgs = list(zip(range(len(bgs)), bgs))
    print(f"\n## Recall on {len(chips)} held-out UTKFace faces (% found; FP = other detections)\n")
    print("| detector | placement | kind | " + " | ".join(f"{s} px" for s in sizes) + " | FP |")
    print("|---" * (len(sizes) + 4) + "|")
    for canvas in (True, False):
        for kind in ("old", "tiny", "jpeg"):
            cases = {s: [make_case(c, s, kind, canvas, bgs, np.random.default_rng([s, canvas, len(kind)]))
                         for c in chips] for s in sizes}
            for dname, det in dets.items():
                cells, fp = [], 0
                for s in sizes:
                    found = 0
                    for (img, gt), faces in zip(cases[s], det.detect_many([im for im, _ in cases[s]])):
                        hit = [iou(f.box, gt) >= 0.4 for f in faces]
                        found += any(hit)
                        fp += len(hit) - sum(hit)
                    cells.append(f"{100 * found / len(chips):.0f}")
                print(f"| {dname} | {'canvas' if canvas else 'tight'} | {kind} | " + " | ".join(cells) + f" | {fp} |",
                      flush=True)


def degraded_face_free(images) -> list[tuple[str, np.ndarray]]:
    """Each face-free image made old-photo-like and JPEG q15, at its size and at half:
    the degradations that bring out a low score cut's false positives."""
    rng = np.random.default_rng(11)
    out = []
    for name, im in images:
        for kind in ("old", "jpeg"):
            for f in (1.0, 0.5):
                x = im if f == 1 else cv2.resize(im, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
                out.append((f"{name}:{kind}:{f}", degrade(x, kind, rng)))
    return out


def false_positive_table(dets: dict) -> None:
    clean = face_free_images()
    sets = {"clean": clean, "degraded": degraded_face_free(clean)}
    print(f"\n## Face-free images ({len(clean)}: {len(FACE_FREE_CORNERS)} photos' corners checked by eye, "
          f"24 synthetic textures; and {len(sets['degraded'])} degraded versions: old and JPEG q15, full and "
          f"half size)\n")
    print("CNN margin: the best score of any detection on them, searched with the score cut lowered by 0.8 "
          "(dlib's weights: to -1.2); for images searched as face crops (panini_cli.detectors.SMALL_SIDE), "
          "with their own weights and cut.\n")
    print("| detector | clean: images with a detection | degraded: images with a detection | where | "
          "CNN margin |\n|---|---|---|---|---|")
    from panini_cli.detectors import make_detector

    for dname, det in dets.items():
        kind, opts = detector_options(dname)
        margin, cut = "-", None
        if kind == "cnn":              # one search 0.8 lower: dlib's NMS keeps a box whatever lower
            cut = det.cut_for(False)   # boxes exist, so the detections above the cut are the same
            low = make_detector("cnn", **{**opts, "threshold": det.threshold - 0.8,
                                          "crop_threshold": det.crop_threshold - 0.8,
                                          "confirm_cut": det.confirm_cut - 0.8})
            # boxes only: landmarks on every low-scoring box would take most of the time
            found = {k: low.boxes_many([np.ascontiguousarray(cv2.cvtColor(im, cv2.COLOR_BGR2RGB)) for _, im in v])
                     for k, v in sets.items()}
            crop = {k: [det.is_crop(*im.shape[:2]) for _, im in v] for k, v in sets.items()}
            for which, c, label in ((False, cut, ""), (True, det.crop_threshold, "face crops: ")):
                scores = [row[4] for k, fs in found.items() for d, cr in zip(fs, crop[k]) if cr == which for row in d]
                text = f"{max(scores):.2f}" if scores else f"none above {c - 0.8:.1f}"
                margin = (margin + "; " if margin != "-" else "") + label + text
            found = {k: [d[d[:, 4] >= det.cut_for(cr)] for d, cr in zip(fs, crop[k])]
                     for k, fs in found.items()}
        else:
            found = {k: det.detect_many([im for _, im in v]) for k, v in sets.items()}
        hits = {k: [(name, len(f)) for (name, _), f in zip(sets[k], fs) if len(f)] for k, fs in found.items()}
        where = ", ".join(f"{nm} ({k})" for nm, k in hits["clean"] + hits["degraded"]) or "-"
        print(f"| {dname} | {len(hits['clean'])} | {len(hits['degraded'])} | {where} | {margin} |", flush=True)


def whole_photo_tables(dets: dict, scales: list[float] = (1.0,)) -> None:
    """Detections per photo (where the detectors disagree) and time per photo; each photo
    also enlarged by the other `scales` (the device carries one photo: sizes up to 1080p)."""
    photos = []
    for p in sorted(WHOLE.iterdir()):
        img = cv2.imread(str(p))
        for f in scales:
            photos.append((p.name if f == 1 else f"{p.name}@{f:g}x",
                           img if f == 1 else cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)))
    if not photos:
        sys.exit(f"no photos in {WHOLE}")
    for det in dets.values():
        det.detect(photos[0][1])                                      # load models, warm up
    counts = {d: [] for d in dets}
    wall = {d: 0.0 for d in dets}
    cpu = {d: 0.0 for d in dets}
    boxes = {}
    for name, img in photos:                                          # interleaved: same noise for all
        for dname, det in dets.items():
            t, c = time.perf_counter(), time.process_time()
            faces = det.detect(img)
            wall[dname] += time.perf_counter() - t
            cpu[dname] += time.process_time() - c
            counts[dname].append(len(faces))
            boxes[name, dname] = [tuple(int(v) for v in f.box) for f in faces]
    print(f"\n## Whole photos ({len(photos)}): faces found where the detectors disagree\n")
    print("| photo | " + " | ".join(dets) + " |\n|---" * 1 + "|---" * len(dets) + "|")
    for i, (name, _) in enumerate(photos):
        row = [counts[d][i] for d in dets]
        if len(set(row)) > 1:
            print(f"| {name} | " + " | ".join(map(str, row)) + " |")
    print("| total | " + " | ".join(str(sum(counts[d])) for d in dets) + " |")
    if any(name == "skimage_astronaut.png" for name, _ in photos):
        print("\nskimage_astronaut.png boxes (the face is near x 170-250, y 40-130; the patch lower right):")
        for d in dets:
            print(f"  {d}: {boxes['skimage_astronaut.png', d]}")
    batched = {}
    for dname, det in dets.items():                                   # all photos in one call
        t = time.perf_counter()
        det.detect_many([img for _, img in photos])
        batched[dname] = time.perf_counter() - t
    base = next(iter(dets))
    print(f"\n## Time per whole photo (mean of {len(photos)}, landmarks included; torch threads: "
          f"{_torch_threads()})\n")
    print(f"| detector | wall s | CPU s | wall / {base} | CPU / {base} | batched: photos/s |\n|---|---|---|---|---|---|")
    for d in dets:
        print(f"| {d} | {wall[d] / len(photos):.3f} | {cpu[d] / len(photos):.3f} | {wall[d] / wall[base]:.2f} | "
              f"{cpu[d] / cpu[base]:.2f} | {len(photos) / batched[d]:.1f} |")


def _torch_threads():
    import torch
    return torch.get_num_threads()


def ffhq_table(dets: dict) -> None:
    print("\n## FFHQ crop error (% of the crop side; crop at S px centred in a 1.5 S grey canvas)\n")
    print("| detector | S | faces | mean | median | max | > 3% | missed |\n|---|---|---|---|---|---|---|---|")
    for size in (256, 384, 512):
        faces = ffhq_faces(size=size)
        for dname, det in dets.items():
            errs, missed = [], 0
            for (name, canvas, off), found in zip(faces, det.detect_many([c for _, c, _ in faces])):
                ctr = (canvas.shape[0] - 1) / 2                       # the face nearest the centre
                found = sorted(found, key=lambda f: abs((f.box[0] + f.box[2]) / 2 - ctr)
                               + abs((f.box[1] + f.box[3]) / 2 - ctr))
                if not found:
                    missed += 1
                    continue
                errs.append(ffhq_crop_error(found[0], off, size))
            e = np.array(errs)
            print(f"| {dname} | {size} | {len(faces)} | {e.mean():.2f} | {np.median(e):.2f} | {e.max():.2f} | "
                  f"{int((e > 3).sum())} | {missed} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="held-out faces per recall cell")
    ap.add_argument("--sizes", type=int, nargs="+", default=[30, 40, 50, 60, 80, 100])
    ap.add_argument("--detectors", nargs="+", default=["hog", "hog-pad", "cnn", "cnn-fp32", "cnn-min40-t0"])
    ap.add_argument("--only", nargs="+", default=["time", "ffhq", "fp", "recall"],
                    choices=["time", "ffhq", "fp", "recall"])
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--device", default="cpu", help="where the CNN detectors run: cpu, cuda, cuda:N")
    ap.add_argument("--photo-scales", type=float, nargs="+", default=[1.0],
                    help="time each whole photo also at these scales (e.g. 1 2 3.2)")
    ap.add_argument("--landmarks", default="68", choices=["68", "5"], help="dlib landmark model (5: the small one)")
    ap.add_argument("--weights", nargs="+", default=[], help="CNN weight files, used by detector names with wN")
    ap.add_argument("--fit", action="store_true", help="measure detectors.MMOD_TO_HOG / LANDMARKS_TO_HOG instead")
    args = ap.parse_args()
    needs = [WHOLE] + ([UTK] if args.fit or "recall" in args.only else []) + ([ALIGNED] if "ffhq" in args.only else [])
    missing = [str(d) for d in needs if not d.is_dir()]
    if missing:
        sys.exit(f"needs the shared data: {', '.join(missing)} not found")
    WEIGHT_FILES.extend(args.weights)
    if args.fit:
        fit_boxes()
        return
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    dets = detectors(args.detectors, args.device, args.landmarks)
    print(f"CNN detectors on {args.device}, {args.landmarks}-point landmarks")
    if "time" in args.only:
        whole_photo_tables(dets, args.photo_scales)
    if "ffhq" in args.only:
        ffhq_table(dets)
    if "fp" in args.only:
        false_positive_table(dets)
    if "recall" in args.only:
        recall_tables(dets, args.n, args.sizes)


if __name__ == "__main__":
    main()
