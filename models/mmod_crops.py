"""Training crops for fine-tuning the MMOD face detector on degraded faces.

Why: dlib's MMOD network was trained on clean faces; old-photo-like faces of 30-50 px
(blurred, shrunk, noisy, compressed) score below its cut. A crop here is what the net
sees at inference once an image has been enlarged and brought down the pyramid: a
`size` px square at net scale, holding either one face whose side is about the net's
80 px window (a positive) or none (a negative: background only, or a face far from the
window's scale). Faces are degraded at their own, native size first and only then
resized to net scale, as the detector enlarges a small degraded photo.

Faces come from UTKFace chips outside the benchmark's held-out list; backgrounds from
video frames with their faces masked out and from synthetic textures unlike the
benchmark's face-free set (benchmarks/detect.py), so neither benchmark is trained on.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

WINDOW = 80            # the net's detector window (mmod_human_face_detector.dat)
MEAN_BGR = (104.298, 117.001, 122.782)     # its input mean: what the canvas holds between tiles


@dataclass
class Background:
    """An image and the boxes (x0, y0, x1, y1) a negative crop must not touch."""
    image: np.ndarray
    forbidden: np.ndarray


def _jpeg(img: np.ndarray, q: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(q)])[1], cv2.IMREAD_COLOR)


def degrade_random(img: np.ndarray, rng: np.random.Generator, max_down: float = 4.0) -> np.ndarray:
    """A random mix of what old and compressed photos suffer, at the image's own size
    (shrunk by at most `max_down` before being enlarged back)."""
    h, w = img.shape[:2]
    kind = rng.choice(["clean", "jpeg", "jpeg", "old", "old", "old", "old", "blur_noise", "down"])
    x = img
    if kind in ("old", "blur_noise") and rng.random() < 0.9:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 2.0))
    if kind in ("old", "down"):
        k = rng.uniform(1.5, max(1.5, max_down))
        small = cv2.resize(x, (max(1, round(w / k)), max(1, round(h / k))), interpolation=cv2.INTER_AREA)
        x = cv2.resize(small, (w, h), interpolation=[cv2.INTER_LINEAR, cv2.INTER_CUBIC][rng.integers(2)])
    if kind in ("old", "blur_noise"):
        x = np.clip(x + rng.normal(0, rng.uniform(2, 14), x.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.2:                                   # black and white
        x = cv2.cvtColor(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if rng.random() < 0.3:                                   # faded or harsh contrast
        a, b = rng.uniform(0.6, 1.3), rng.uniform(-30, 30)
        x = np.clip(x.astype(np.float32) * a + b + (1 - a) * 128, 0, 255).astype(np.uint8)
    if kind == "jpeg":
        x = _jpeg(x, rng.integers(8, 41))
    elif kind == "old" or rng.random() < 0.3:
        x = _jpeg(x, rng.integers(15, 70))
    return x


def synthetic_texture(rng: np.random.Generator, side: int = 384, kinds: int = 4) -> np.ndarray:
    """Face-free textures of kinds the benchmark's face-free set does not hold: 1/f noise,
    piles of shapes, text, line drawings; with kinds=6 also skin-coloured hand-like
    shapes and pale petals on dark cloth (what the fine-tuned net took for faces)."""
    kind = rng.integers(kinds)
    if kind >= 4:
        return _blobs_on_dark(rng, side, skin=kind == 4)
    if kind == 0:                                            # fractal noise, colour-tinted
        f = np.fft.fftfreq(side)
        r = np.hypot(f[:, None], f[None, :]) + 1.0 / side
        spec = (rng.standard_normal((3, side, side)) + 1j * rng.standard_normal((3, side, side))) / r ** rng.uniform(0.8, 1.6)
        x = np.real(np.fft.ifft2(spec)).transpose(1, 2, 0)
        x = (x - x.mean()) / (x.std() + 1e-9) * rng.uniform(25, 60) + rng.uniform(60, 190)
        return np.clip(x, 0, 255).astype(np.uint8)
    img = np.full((side, side, 3), rng.integers(0, 256, 3), np.uint8)
    if kind == 1:                                            # shapes
        for _ in range(rng.integers(5, 40)):
            c = tuple(int(v) for v in rng.integers(0, 256, 3))
            p = tuple(int(v) for v in rng.integers(0, side, 2))
            s = int(rng.integers(4, side // 3))
            t = rng.integers(3)
            if t == 0:
                cv2.ellipse(img, p, (s, int(rng.integers(4, side // 3))), float(rng.uniform(0, 180)), 0, 360, c, -1)
            elif t == 1:
                cv2.rectangle(img, p, (p[0] + s, p[1] + int(rng.integers(4, side // 3))), c, -1)
            else:
                pts = rng.integers(0, side, (int(rng.integers(3, 7)), 2)).astype(np.int32)
                cv2.fillPoly(img, [pts], c)
    elif kind == 2:                                          # text
        for _ in range(rng.integers(5, 25)):
            word = "".join(rng.choice(list(string.ascii_letters + string.digits), int(rng.integers(2, 10))))
            p = tuple(int(v) for v in rng.integers(0, side, 2))
            cv2.putText(img, word, p, int(rng.integers(8)), float(rng.uniform(0.4, 3)),
                        tuple(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(1, 5)))
    else:                                                    # lines and curves
        for _ in range(rng.integers(10, 60)):
            c = tuple(int(v) for v in rng.integers(0, 256, 3))
            a, b = (tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(2))
            if rng.random() < 0.5:
                cv2.line(img, a, b, c, int(rng.integers(1, 8)))
            else:
                cv2.circle(img, a, int(rng.integers(3, side // 2)), c, int(rng.integers(1, 6)))
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 2.0))


def _blobs_on_dark(rng: np.random.Generator, side: int, skin: bool) -> np.ndarray:
    """A palm with fingers in a skin tone, or a cluster of pale petals, shaded, on a dark
    or middling cloth-like ground."""
    img = np.full((side, side, 3), rng.integers(10, 120, 3), np.uint8)
    img = np.clip(img + rng.normal(0, rng.uniform(2, 10), img.shape), 0, 255).astype(np.uint8)
    for _ in range(rng.integers(1, 4)):
        if skin:
            r = rng.uniform(130, 250)
            colour = (r * rng.uniform(0.35, 0.7), r * rng.uniform(0.6, 0.85), r)      # BGR, R > G > B
        else:
            colour = rng.uniform(150, 255, 3)
        mask = np.zeros((side, side), np.uint8)
        c = rng.integers(side // 6, side - side // 6, 2)
        s = rng.uniform(side / 12, side / 4)
        cv2.ellipse(mask, (int(c[0]), int(c[1])), (int(s), int(s * rng.uniform(0.6, 1.4))),
                    float(rng.uniform(0, 180)), 0, 360, 255, -1)
        for _ in range(rng.integers(2, 6)):                  # fingers or petals
            a = rng.uniform(0, 2 * np.pi)
            tip = c + np.array([np.cos(a), np.sin(a)]) * s * rng.uniform(1.2, 2.0)
            cv2.line(mask, (int(c[0]), int(c[1])), (int(tip[0]), int(tip[1])), 255, int(max(2, s * rng.uniform(0.2, 0.5))))
        m = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), rng.uniform(0.5, 2.5))[..., None]
        yy, xx = np.mgrid[0:side, 0:side] / side
        shade = (1 + rng.uniform(-0.35, 0.35) * (xx - 0.5) + rng.uniform(-0.35, 0.35) * (yy - 0.5))[..., None]
        img = (img * (1 - m) + np.asarray(colour) * shade * m).clip(0, 255).astype(np.uint8)
    return img


def spread_frames(path, count: int):
    """(frame index, BGR frame) of `count` frames spread evenly over a clip (unreadable ones skipped)."""
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    try:
        for i in np.linspace(0, max(n - 1, 0), count).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
            ok, frame = cap.read()
            if ok:
                yield int(i), frame
    finally:
        cap.release()


def video_backgrounds(paths, frames_per_clip: int, find_faces) -> list[Background]:
    """Frames spread over each clip; `find_faces(bgr) -> (n, 4) boxes` marks what to avoid
    (each box grown to 2.2x, so hair and ears are avoided too)."""
    out = []
    for path in paths:
        for _, frame in spread_frames(path, frames_per_clip):
            boxes = np.asarray(find_faces(frame), np.float64).reshape(-1, 4)
            c, s = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]).max(1, initial=0)[:, None] * 1.1
            out.append(Background(frame, np.concatenate([c - s, c + s], 1)))
    return out


def background_piece(bgs: list[Background], rng: np.random.Generator, side: int, kinds: int = 4) -> np.ndarray:
    """A side x side face-free piece of a background (or a fresh texture of `kinds`)."""
    for _ in range(30):
        if not bgs or rng.random() < 0.4:
            break
        bg = bgs[rng.integers(len(bgs))]
        h, w = bg.image.shape[:2]
        scale = rng.uniform(0.5, 2.0)
        s = int(min(side / scale, h, w))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        f = bg.forbidden
        if len(f) and ((f[:, 0] < x + s) & (f[:, 2] > x) & (f[:, 1] < y + s) & (f[:, 3] > y)).any():
            continue
        piece = bg.image[y:y + s, x:x + s]
        return cv2.resize(piece, (side, side), interpolation=cv2.INTER_AREA if s > side else cv2.INTER_LINEAR)
    tex = synthetic_texture(rng, max(64, side), kinds)
    return tex[:side, :side] if tex.shape[0] >= side else cv2.resize(tex, (side, side))


def _paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int, rng: np.random.Generator) -> None:
    """Paste with a hard edge (as the benchmark does) or feathered into the background."""
    s = patch.shape[0]
    if rng.random() < 0.5:
        canvas[y:y + s, x:x + s] = patch
        return
    m = np.zeros((s, s), np.float32)
    cv2.ellipse(m, (s // 2, s // 2), (int(s * 0.55), int(s * 0.62)), 0, 0, 360, 1.0, -1)
    m = cv2.GaussianBlur(m, (0, 0), s * 0.08)[..., None]
    region = canvas[y:y + s, x:x + s].astype(np.float32)
    canvas[y:y + s, x:x + s] = (patch * m + region * (1 - m)).astype(np.uint8)


def _face_chip(chip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The chip flipped and turned a little (faces in photos are not all upright)."""
    if rng.random() < 0.5:
        chip = chip[:, ::-1]
    a = rng.normal(0, 7)
    if abs(a) > 1:
        s = chip.shape[0]
        m = cv2.getRotationMatrix2D((s / 2 - 0.5, s / 2 - 0.5), a, 1.0)
        chip = cv2.warpAffine(np.ascontiguousarray(chip), m, (s, s), borderMode=cv2.BORDER_REFLECT_101)
    return np.ascontiguousarray(chip)


def part_crop(chips: list[np.ndarray], bgs: list[Background], rng: np.random.Generator, size: int = 192,
              kinds: int = 4) -> tuple[np.ndarray, np.ndarray, None]:
    """A negative: part of a face 3-6 windows wide (an ear, a cheek, a brow, the hairline)
    filling the crop, as a large face shows at the finer pyramid levels. Every window there
    misses the face (IoU < 0.12), and the fine-tuned net still called such parts faces:
    ears, cheeks and foreheads are most of what it finds off the faces of large aligned
    photos (scripts/validate_confirm.py)."""
    s = int(rng.integers(60, 201))                           # the face's native side
    g = WINDOW * rng.uniform(3.0, 6.0) / s                   # native -> net scale
    n = int(np.ceil(size / g))                               # the crop's native side
    canvas = background_piece(bgs, rng, s + 2 * n, kinds)
    chip = cv2.resize(_face_chip(chips[rng.integers(len(chips))], rng), (s, s), interpolation=cv2.INTER_AREA)
    _paste(canvas, chip, n, n, rng)
    x, y = (int(rng.integers(n // 2, n + s - n // 2 + 1)) for _ in range(2))   # mostly on the face
    out = []
    for img in (degrade_random(canvas, rng, max_down=min(4.0, s / 8)), canvas):
        piece = img[y:y + n, x:x + n]
        out.append(np.ascontiguousarray(cv2.resize(piece, (size, size), interpolation=cv2.INTER_LINEAR)))
    return out[0], out[1], None


def make_crop(chips: list[np.ndarray], bgs: list[Background], rng: np.random.Generator, size: int = 192,
              p_face: float = 0.6, p_edge: float = 0.0, kinds: int = 4, p_part: float = 0.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(degraded crop, clean crop, face square x0, y0, x1, y1 at net scale or None).

    Every crop is drawn at a native scale and enlarged (or shrunk) by g to net scale, g
    as a face of native side s (22-140 px, 60% under 50 px) needs to reach t px: so
    face-free crops are as blurred by enlarging as the faces are, and enlargement alone
    tells the net nothing. t is 70-96 (about the window, as the pyramid delivers it: a
    positive) or far from it (0.45-0.6 or 1.7-2.2 windows: a face the net must not call
    one at this level). The native-size picture is degraded before it is resized.
    `p_edge`: the share of crops given a detector-canvas edge (mirror_band). Off in the
    shipped recipe: with 0.3-0.4 the best face-free validation score rose (2.7-3.1
    against 1.55 at 1000-1250 steps), though most false positives sat at image edges.
    `kinds`: synthetic_texture's kinds for backgrounds (6 adds hand- and petal-like shapes).
    `p_part`: the share of crops that are part_crop's parts of large faces."""
    if p_part and rng.random() < p_part:
        return part_crop(chips, bgs, rng, size, kinds)
    s = int(round(np.exp(rng.uniform(np.log(22), np.log(50) if rng.random() < 0.6 else np.log(140)))))
    has_face = rng.random() < p_face
    positive = has_face and rng.random() < 0.8
    t = rng.uniform(70, 96) if not has_face or positive else \
        WINDOW * (rng.uniform(0.45, 0.6) if rng.random() < 0.5 else rng.uniform(1.7, 2.2))
    g = t / s                                                # native -> net scale
    native = int(np.ceil(size / g))
    canvas = background_piece(bgs, rng, max(native, s + 2), kinds)
    n = canvas.shape[0]
    box = None
    if has_face:
        chip = cv2.resize(_face_chip(chips[rng.integers(len(chips))], rng), (s, s), interpolation=cv2.INTER_AREA)
        margin = 0.15 * s if positive else -0.3 * s          # negatives may be cut by the crop
        lo, hi = int(margin), int(n - s - margin)
        x, y = (int(rng.integers(lo, max(lo, hi) + 1)) for _ in range(2))
        x, y = min(max(x, 0), n - s), min(max(y, 0), n - s)
        _paste(canvas, chip, x, y, rng)
        if positive:
            box = np.array([x * g, y * g, (x + s) * g - 1, (y + s) * g - 1])
    elif rng.random() < 0.3:                                 # a pasted square that is not a face
        q = int(rng.integers(max(4, n // 6), max(5, n // 2)))
        x, y = (int(v) for v in rng.integers(0, n - q + 1, 2))
        _paste(canvas, background_piece(bgs, rng, q, kinds), x, y, rng)
    # the detector mirrors each image out by 32 px: a mirrored edge is symmetric, as faces
    # are, so crops must show such edges too, and the flat canvas beyond them
    band = None
    if rng.random() < p_edge:
        band = (int(rng.integers(4)), int(rng.integers(6, 33)), int(rng.integers(0, 31)) if rng.random() < 0.7 else 0)
    if band is not None and box is not None:
        side, w, f = band
        lo = box[[1, 0, 1, 0][side]] if side in (0, 1) else size - 1 - box[[3, 2, 3, 2][side]]
        if lo < w + f + 4:                                   # keep the face out of the mirror
            band = None
    out = []
    for img in (degrade_random(canvas, rng, max_down=min(4.0, s / 8)), canvas):   # >= 8 px of face left
        r = cv2.resize(img, (round(n * g), round(n * g)), interpolation=cv2.INTER_LINEAR if g > 1 else cv2.INTER_AREA)
        r = np.ascontiguousarray(r[:size, :size]) if r.shape[0] >= size else \
            cv2.copyMakeBorder(r, 0, size - r.shape[0], 0, size - r.shape[1], cv2.BORDER_REFLECT_101)
        out.append(mirror_band(r, *band) if band else r)
    return out[0], out[1], box


def mirror_band(img: np.ndarray, side: int, w: int, flat: int = 0) -> np.ndarray:
    """The image's edge as the detector's canvas shows it: on one side (0 top, 1 left,
    2 bottom, 3 right) a w px mirror of what lies inside (cv2.BORDER_REFLECT_101, the
    detector's pad) and beyond it `flat` px of the mean colour (the canvas between tiles)."""
    h, wd = img.shape[:2]
    t, l, b, r = [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)][side]
    inner = img[t * (w + flat):h - b * (w + flat), l * (w + flat):wd - r * (w + flat)]
    out = cv2.copyMakeBorder(inner, t * w, b * w, l * w, r * w, cv2.BORDER_REFLECT_101)
    return cv2.copyMakeBorder(out, t * flat, b * flat, l * flat, r * flat, cv2.BORDER_CONSTANT, value=MEAN_BGR)


def load_chips(folder: Path, exclude: set[str], limit: int | None = None) -> list[np.ndarray]:
    names = sorted(n for n in (p.name for p in Path(folder).iterdir()) if n not in exclude)
    return [cv2.imread(str(Path(folder) / n)) for n in names[:limit]]
