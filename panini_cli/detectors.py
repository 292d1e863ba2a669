"""Face detectors behind one protocol (faces.FaceDetector), chosen by name.

Why: dlib's HOG detector misses degraded faces (blurred, tiny, compressed old photos)
that dlib's MMOD CNN finds; `CnnDetector` runs that CNN ported to torch
(panini_models.mmod), batched, on CPU or CUDA; the default `cnn` runs it with weights
fine-tuned on degraded faces and has dlib's own weights confirm each find in a larger
photo (panini_cli/confirm.py). dlib's landmark predictors were trained
on HOG boxes, so CNN boxes are first mapped onto HOG-like boxes and the 68 points are
refined on the boxes they imply (constants measured, see `MMOD_TO_HOG`). torch is
imported only when a CNN detector is first used, so `panini --help` stays light.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import cv2
import numpy as np

from .confirm import CNN_CANDIDATE_CUT, CNN_CONFIRM_CUT, kept, support
from .faces import (PREDICTOR_FILES, DlibDetector, Face, FaceModelError, landmarks5_from_68,
                    landmarks5_from_dlib5, load_shape_predictor)

MMOD_FILE = "mmod_human_face_detector.dat"          # dlib's CNN face detector, CC0
# HOG-like box from an MMOD box (square, side s, centre c): centre c + (dx, dy) * s,
# side k * s. Means over 394 faces both detectors found on 300 UTKFace chips (none of the
# held-out ones) and the 38 shared whole photos (`python benchmarks/detect.py --fit`).
MMOD_TO_HOG = (0.0149, 0.0571, 1.0104)
# The HOG box from 68 landmarks (centroid m, RMS radius r): centre m + (ax, ay) * r, side
# k * r; means over the 408 HOG detections of the same images. One fixed map cannot follow
# how the two detectors' boxes differ with pose (a turned face's MMOD box can sit 15% off),
# so the 68-point predictor is run again on the box its own points imply: 3 passes bring
# the FFHQ crop error to HOG's or below (benchmarks/detect.py). The 5-point model, ~3%
# with either detector, does not gain from it.
LANDMARKS_TO_HOG = (-0.0606, -0.1424, 2.7784)
REFINE_PASSES = {"68": 3, "5": 0}
# Smallest face (px) the CNN finds at scale 1: its window is 80 px, and on the held-out
# faces recall at scale s falls from ~100% at 80 / s px to ~0 at 60 / s px (measured at
# s = 1, 1.5, 2, 2.67). Images are enlarged by this / min_face to reach min_face.
CNN_MIN_FACE_AT_1X = 80.0
# Defaults, measured on held-out faces (benchmarks/detect.py): searching for faces from
# 30 px (images enlarged up to 80/30 = 2.67x) takes 30 px faces from ~2% to 100% (clean)
# and 85-88% (JPEG q15). A score cut of -0.4 instead of dlib's 0 adds 4-15 points of recall
# on degraded faces of 40-50 px; the best score on 650 face-free images (photo corners
# and synthetic textures, clean and degraded) was -0.52, and the extra detections on the
# shared whole photos and video frames between -0.4 and 0 were all real (partly hidden) faces.
CNN_MIN_FACE = 30.0
CNN_THRESHOLD = -0.4
# An image whose searched side is at most this (4 detector windows) is hardly larger than
# the face in it (a face crop). The fine-tuned weights find such faces far more often in a
# flat surround of the image's mean colour than in its mirror (validation chips cut
# tight, old photo 30 px: 39% -> 88%; JPEG q15 30 px: 76% -> 96%; face-free pieces of
# 30-110 px: best score 2.16 -> 1.40); dlib's weights lose faces in it (21% -> 6%).
SMALL_SIDE = 320
# The CNN's weights: "dlib" (the .dat file's own: CnnDetector's default, dlib's exact
# detector) or "degraded" (fine-tuned on
# degraded faces by scripts/finetune_detector.py, shipped in panini_models/weights/ with
# its sha256 and its own score cut, chosen on validation data: its scores sit higher than
# dlib's) and its small_fill. `--detector cnn-degraded` uses them: on held-out old-photo
# faces of 30 px it finds 91% in a background and 85% cut tight (dlib's weights 17% and
# 16%), but it also calls skin-coloured blobs (hands, ornaments on dark cloth) faces: 6
# false faces in the 38 shared photos, 3 of 650 face-free images
# (benchmarks/results/detect_default.md), so alone it is not the default: `cnn` confirms
# its detections in larger photos with dlib's weights (panini_cli/confirm.py).
CNN_WEIGHTS = {"degraded": ("mmod_degraded.safetensors", "mmod_degraded.json")}
CNN_DEFAULT_WEIGHTS = "dlib"
# What the default `cnn` searches face crops (searched side <= SMALL_SIDE) with: the
# fine-tuned weights in their mean-colour surround. On validation chips cut tight they
# find old-photo faces of 30 / 40 px 88 / 95% of the time (dlib's weights 21 / 63%), and on
# 300 face-free pieces of 30-110 px their best score was 1.40, under their cut of 1.85; the
# false faces they find (hands, ornaments) were all in larger photos, searched with dlib's.
CNN_CROP_WEIGHTS = "degraded"


def _bundled(weights: str) -> tuple[Path, Path]:
    """(weight file, manifest) of bundled CNN weights, found without importing torch."""
    spec = importlib.util.find_spec("panini_models")
    folder = Path(list(spec.submodule_search_locations)[0], "weights")
    return folder / CNN_WEIGHTS[weights][0], folder / CNN_WEIGHTS[weights][1]


def _manifest(weights: str, key: str):
    """One entry (sha256, threshold, ...) of bundled CNN weights' manifest."""
    manifest = _bundled(weights)[1]
    try:
        return json.loads(manifest.read_text())[key]
    except (OSError, ValueError, KeyError) as e:
        raise FaceModelError(f"{manifest}: no {key} for the {weights!r} detector weights ({e})") from e


def cnn_threshold(weights) -> float:
    """The score cut that goes with these weights: CNN_THRESHOLD for dlib's, the manifest's
    for bundled ones, dlib's own 0 for any other file."""
    if weights in (None, "dlib"):
        return CNN_THRESHOLD
    if weights in CNN_WEIGHTS:
        return float(_manifest(weights, "threshold"))
    return 0.0


def cnn_small_fill(weights) -> str:
    """How these weights want a small image surrounded: the bundled manifest's
    'small_fill', else 'mirror' (dlib's weights: a flat surround loses faces there)."""
    return str(_manifest(weights, "small_fill")) if weights in CNN_WEIGHTS else "mirror"


def find_mmod_model() -> Path:
    """Locate mmod_human_face_detector.dat in face-recognition-models without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0], "models", MMOD_FILE)
        if path.is_file():
            return path
    raise FaceModelError(f"dlib CNN face model {MMOD_FILE} not found (pip install face-recognition-models)")


def resolve_cnn_weights(weights) -> Path | None:
    """'dlib' -> None (the .dat file's weights), a bundled name -> its file, checked against
    its recorded sha256, else a path to our safetensors file."""
    if weights in (None, "dlib"):
        return None
    if weights in CNN_WEIGHTS:
        from panini_models.checkpoints import file_sha256

        file, manifest = _bundled(weights)
        if not file.is_file() or not manifest.is_file():
            raise FaceModelError(f"{file}: the bundled face detector weights are missing from this installation")
        if file_sha256(file) != _manifest(weights, "sha256"):
            raise FaceModelError(f"{file}: sha256 differs from {manifest.name}: the file is damaged; reinstall panini")
        return file
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FaceModelError(f"{path}: face detector weights not found (use 'dlib', "
                             f"{', '.join(repr(k) for k in CNN_WEIGHTS)} or a .safetensors file)")
    return path


def mmod_to_hog_box(box: np.ndarray, mapping: tuple[float, float, float] | None = None) -> np.ndarray:
    """(n, 4) MMOD boxes (x0, y0, x1, y1) -> HOG-like boxes, same convention."""
    box = np.asarray(box, np.float64).reshape(-1, 4)
    dx, dy, k = MMOD_TO_HOG if mapping is None else mapping
    s = (box[:, 2] - box[:, 0] + box[:, 3] - box[:, 1]) / 2 + 1
    cx, cy = (box[:, 0] + box[:, 2]) / 2 + dx * s, (box[:, 1] + box[:, 3]) / 2 + dy * s
    half = (k * s - 1) / 2
    return np.stack([cx - half, cy - half, cx + half, cy + half], 1)


def hog_box_from_landmarks(pts: np.ndarray, fit=LANDMARKS_TO_HOG) -> np.ndarray:
    """The box dlib's HOG detector would most likely have given for these 68 landmarks."""
    c = pts.mean(0)
    r = math.sqrt(((pts - c) ** 2).sum(1).mean())
    ax, ay, k = fit
    cx, cy, half = c[0] + ax * r, c[1] + ay * r, (k * r - 1) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def distinct_faces(faces: list[Face], tol: float = 0.25) -> list[Face]:
    """One face per person: the best-scored of faces whose 5 landmarks lie within `tol`
    eye distances of each other (on average). The pyramid can find a face at two levels
    with boxes too unlike for the detector's overlap test; the landmark fit then brings
    both onto the same face, and the restorer would get it twice."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda fc: -fc.score):
        lm = np.asarray(f.landmarks5)
        eyes = max(float(np.hypot(*(lm[1] - lm[0]))), 1.0)
        if all(np.hypot(*(lm - k.landmarks5).T).mean() > tol * eyes for k in kept):
            kept.append(f)
    return kept


class HogDetector(DlibDetector):
    """faces.DlibDetector (dlib HOG) with the batched entry point of the protocol."""

    def detect_many(self, images_bgr8: list[np.ndarray]) -> list[list[Face]]:
        return [self.detect(im) for im in images_bgr8]


class CnnDetector:
    """dlib's MMOD CNN face detector in torch, plus dlib landmarks on HOG-like boxes.

    Images under 1.5 MP are searched enlarged by CNN_MIN_FACE_AT_1X / min_face (so faces
    down to `min_face` px are found; at most `max_pixels` searched), larger ones at their
    size (faces from ~80 px), images above `max_side` shrunk first: DlibDetector's policy. The searched image is
    mirrored out by `pad` px (faces cut by the border are found far more often; boxes
    centred in the mirror are dropped). `small_fill`: how an image hardly larger than a face
    (searched side <= SMALL_SIDE) is surrounded instead: 'mirror' (as any other), or 'mean'
    (its mean colour, half its side on each edge); None: the weights' own choice
    (cnn_small_fill). `pyramid` is the pyramid's N (levels shrink by
    (N-1)/N; dlib's 6; smaller is coarser and faster). `threshold`: MMOD score cut (dlib's is
    0; None: the cut that goes with the weights, see cnn_threshold).
    `precision`: the convs' arithmetic ('auto': bf16 on CPUs with AMX, else fp32; see
    panini_models.mmod.auto_precision). `weights`: 'dlib' (the model file's own), 'degraded'
    (fine-tuned on degraded faces, bundled) or a path (see resolve_cnn_weights).
    `crop_weights`, `crop_threshold`: the weights and cut for face crops, images whose
    searched side is at most SMALL_SIDE (None: `weights` and `threshold`; make_detector's
    'cnn' uses the fine-tuned weights there). `confirm_weights`: weights that score each
    detection of a larger image again (see panini_cli/confirm.py); its score becomes the sum
    of both, kept from `confirm_cut`, and `threshold` only picks the candidates; with
    `drop_parts` a kept find on the head of a much larger, higher-scoring one goes
    (confirm.off_heads). Landmarks always come from the full-resolution image.
    """

    def __init__(self, landmarks: str = "68", device: str = "cpu", min_face: float = CNN_MIN_FACE,
                 max_side: int = 2048, max_pixels: float = 6.0e6, threshold: float | None = None,
                 pyramid: int = 6, pad: int = 32, box_map: tuple[float, float, float] | None = None,
                 precision: str = "auto", weights=CNN_DEFAULT_WEIGHTS, predictor_path=None, model_path=None,
                 small_fill: str | None = None, crop_weights=None, crop_threshold: float | None = None,
                 confirm_weights=None, confirm_cut: float = CNN_CONFIRM_CUT, drop_parts: bool = True):
        if landmarks not in PREDICTOR_FILES:
            raise ValueError(f"landmarks must be '68' or '5', not {landmarks!r}")
        self.landmarks, self.device, self.min_face = landmarks, device, min_face
        self.max_side, self.max_pixels, self.pyramid = max_side, max_pixels, pyramid
        self.threshold = cnn_threshold(weights) if threshold is None else threshold
        self.pad, self.box_map, self.precision = pad, box_map, precision
        own = crop_weights is None
        self.crop_weights = weights if own else crop_weights
        self.crop_threshold = (self.threshold if own else cnn_threshold(crop_weights)) \
            if crop_threshold is None else crop_threshold
        self.small_fill = cnn_small_fill(self.crop_weights) if small_fill is None else small_fill
        if self.small_fill not in ("mirror", "mean"):
            raise ValueError(f"small_fill must be 'mirror' or 'mean', not {small_fill!r}")
        self.predictor_path, self.model_path, self.weights = predictor_path, model_path, weights
        self.confirm_weights, self.confirm_cut, self.drop_parts = confirm_weights, confirm_cut, drop_parts
        self._net = self._crop_net = self._confirm_net = self._shape = self._dlib = None

    def _load(self) -> None:
        from panini_models.mmod import MMODDetector

        self._dlib, self._shape = load_shape_predictor(self.landmarks, self.predictor_path)
        nets = {}
        for w in dict.fromkeys(x for x in (self.weights, self.crop_weights, self.confirm_weights) if x):
            nets[w] = MMODDetector(self.model_path or find_mmod_model(), device=self.device, pyramid=self.pyramid,
                                   precision=self.precision, weights=resolve_cnn_weights(w))
        self._net, self._crop_net = nets[self.weights], nets[self.crop_weights]
        self._confirm_net = nets.get(self.confirm_weights)

    def cut_for(self, crop: bool) -> float:
        """The cut this detector's final scores are kept from, for a face crop or a larger image."""
        if crop:
            return self.crop_threshold
        return self.confirm_cut if self.confirm_weights else self.threshold

    def is_crop(self, h: int, w: int) -> bool:
        """Whether an h x w image is searched as a face crop (crop weights, small_fill)."""
        f = self.scale_for(h, w)
        return max(1, round(h * f), round(w * f)) <= SMALL_SIDE       # the searched image's side

    def scale_for(self, h: int, w: int) -> float:
        """The factor an h x w image is searched at: enlarged for `min_face` only under
        1.5 MP (after the max_side shrink) and to at most `max_pixels`, as DlibDetector
        upsamples only under 1.5 MP (so both search about the same pixels)."""
        f = min(1.0, self.max_side / max(h, w))
        area = h * w * f * f
        if area >= 1.5e6:
            return f
        up = min(CNN_MIN_FACE_AT_1X / self.min_face, math.sqrt(self.max_pixels / area))
        return f * max(1.0, up)

    def boxes_many(self, images_rgb: list[np.ndarray]) -> list[np.ndarray]:
        """Raw MMOD detections (n, 5: x0, y0, x1, y1, score) in each image's own pixels."""
        if self._net is None:
            self._load()
        scales = [self.scale_for(*im.shape[:2]) for im in images_rgb]
        work = [im if f == 1.0 else cv2.resize(im, (max(1, round(im.shape[1] * f)), max(1, round(im.shape[0] * f))),
                                                interpolation=cv2.INTER_LINEAR if f > 1 else cv2.INTER_AREA)
                for im, f in zip(images_rgb, scales)]
        crop = [self.is_crop(*im.shape[:2]) for im in images_rgb]
        padded, pads = zip(*(self._surround(sm, c) for sm, c in zip(work, crop))) if work else ((), ())
        found: list = [None] * len(work)
        for net, cut, which in ((self._net, self.threshold, False), (self._crop_net, self.crop_threshold, True)):
            idx = [i for i, c in enumerate(crop) if c == which]
            for i, dets in zip(idx, net([padded[i] for i in idx], cut) if idx else []):
                found[i] = dets
        out = []
        for dets, im, sm, b in zip(found, images_rgb, work, pads):
            dets[:, :4] -= b
            cx, cy = (dets[:, 0] + dets[:, 2]) / 2, (dets[:, 1] + dets[:, 3]) / 2
            dets = dets[(cx >= -0.5) & (cx < sm.shape[1] - 0.5) & (cy >= -0.5) & (cy < sm.shape[0] - 0.5)]
            fx, fy = im.shape[1] / sm.shape[1], im.shape[0] / sm.shape[0]
            dets[:, [0, 2]] = (dets[:, [0, 2]] + 0.5) * fx - 0.5      # pixel centres at integers
            dets[:, [1, 3]] = (dets[:, [1, 3]] + 0.5) * fy - 0.5
            out.append(dets)
        if self.confirm_weights:
            larger = [i for i, c in enumerate(crop) if not c]
            for i, more in zip(larger, support(self._confirm_net, [images_rgb[i] for i in larger],
                                                [out[i] for i in larger])):
                out[i][:, 4] += more
                out[i] = out[i][kept(out[i], self.confirm_cut, self.drop_parts)]
        return out

    def _surround(self, searched: np.ndarray, crop: bool) -> tuple[np.ndarray, int]:
        """(the searched image with its surround, the surround's width in px)."""
        if crop and self.small_fill == "mean":                       # a face crop: its mean colour round it
            b = max(self.pad, max(searched.shape[:2]) // 2)
            fill = tuple(float(v) for v in searched.reshape(-1, searched.shape[2]).mean(0))
            return cv2.copyMakeBorder(searched, b, b, b, b, cv2.BORDER_CONSTANT, value=fill), b
        b = self.pad
        return (cv2.copyMakeBorder(searched, b, b, b, b, cv2.BORDER_REFLECT_101) if b else searched), b

    def detect_many(self, images_bgr8: list[np.ndarray]) -> list[list[Face]]:
        rgbs = []
        for im in images_bgr8:
            if im.dtype != np.uint8:
                raise TypeError("CnnDetector expects 8-bit images (use images.to_bgr8)")
            code = cv2.COLOR_GRAY2RGB if im.ndim == 2 else cv2.COLOR_BGR2RGB
            rgbs.append(np.ascontiguousarray(cv2.cvtColor(im, code)))
        results = []
        for rgb, dets in zip(rgbs, self.boxes_many(rgbs)):
            faces = []
            for box, score in zip(mmod_to_hog_box(dets[:, :4], self.box_map), dets[:, 4]):
                pts = self._landmarks(rgb, box)
                for _ in range(REFINE_PASSES[self.landmarks]):
                    pts = self._landmarks(rgb, hog_box_from_landmarks(pts))
                lm5 = landmarks5_from_68(pts) if len(pts) == 68 else landmarks5_from_dlib5(pts)
                faces.append(Face(tuple(float(v) for v in box), float(score), lm5, pts if len(pts) == 68 else None))
            results.append(sorted(distinct_faces(faces), key=lambda fc: -fc.size))
        return results

    def _landmarks(self, rgb: np.ndarray, box) -> np.ndarray:
        rect = self._dlib.rectangle(*(int(round(v)) for v in box))
        return np.array([(p.x, p.y) for p in self._shape(rgb, rect).parts()], np.float64)

    def detect(self, bgr8: np.ndarray) -> list[Face]:
        """Faces in an 8-bit BGR image, largest first."""
        return self.detect_many([bgr8])[0]


def make_detector(kind: str = "hog", landmarks: str = "68", device: str = "cpu", **options):
    """'hog' -> HogDetector (dlib HOG, CPU), 'cnn' -> CnnDetector (torch, `device`): the
    weights fine-tuned on degraded faces, on larger photos confirmed by dlib's (see
    panini_cli/confirm.py), on face crops at their own cut; 'cnn-degraded' -> the fine-tuned
    weights alone everywhere."""
    if kind == "hog":
        return HogDetector(landmarks, **options)
    if kind in ("cnn", "cnn-degraded"):
        options.setdefault("weights", "degraded")
        if kind == "cnn":
            options.setdefault("crop_weights", CNN_CROP_WEIGHTS)
            if options["weights"] == "degraded" and options.setdefault("confirm_weights", "dlib"):
                options.setdefault("threshold", CNN_CANDIDATE_CUT)   # (benchmarks may pick other weights)
        return CnnDetector(landmarks, device=device, **options)
    raise ValueError(f"detector must be cnn, cnn-degraded or hog, not {kind!r}")
