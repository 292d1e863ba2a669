"""Faces across video frames: tracking, landmark smoothing, and frames as pipeline items.

Per frame, every known face is re-detected with dlib's HOG in a small region around
its last box, rescaled so the face is ~80 px, just above the detector's 80 px window
(about 4 ms, against ~110 ms for a 2x-upsampled 512x390 frame). The whole frame is
searched every `detect_every` frames to pick up new faces, and at once on a scene cut
(the frame's 32x32 grey thumbnail changes by more than `cut_threshold` levels on
average: cuts in the test clips change it by 26-70, fast head motion by at most 13);
a cut also ends every track, so smoothing never mixes two shots. Searching each face
at the same scale every frame keeps its box, and so its landmarks, from jumping
between scales. When the region search misses, the landmarks are refit on the last
box for at most `max_lost` frames, and only while the face still looks like its last
accepted view (normalised correlation of a 32 px aligned grey patch), so a scene cut
never gets an old face pasted onto it.

Smoothing is offline and zero-lag: the five landmarks of each track are averaged over
a centred Gaussian window (sigma in frames; 0 = off), which needs a look-ahead of
ceil(2*sigma) frames. A causal filter (EMA, One-Euro) would make the crop trail a
moving head; looking ahead costs only a few frames of memory.

`FramePreparer` is the video counterpart of pipeline.Preparer: pipeline.run calls it
once per frame, in order, from a single worker thread, and it returns Prepared items
holding the frame and one FaceCrop per tracked face, so batching across frames and
the model call are pipeline.run's own. Its state at chunk boundaries is a small JSON
dict, so a resumed run continues the tracks and the smoothing exactly where the
finished chunks left them. With a vdr_smoothing.VdrSmoother it also gives each crop
the vDR averaged along its track (`--smooth-vdr`; the averages join that state).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .. import faces as facelib
from ..pipeline import FaceCrop, Prepared

END = "<end of stream>"        # rel of the items pipeline.run asks for past the last frame
_PATCH = 32                    # size of the grey patch that vouches for a refitted face
_THUMB = 32                    # size of the grey thumbnail that tells a scene cut
_ROI_FACE = 80.0               # region search: the face's size there (px), dlib's window


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _patch(bgr: np.ndarray, lm5: np.ndarray) -> np.ndarray:
    """The face's aligned 32x32 grey patch, zero-mean and unit-norm (align_face cuts the
    region first and area-shrinks it, so this costs the same for any frame size)."""
    crop, _ = facelib.align_face(bgr, facelib.Face((0, 0, 1, 1), 0.0, lm5), _PATCH)
    p = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)
    p -= p.mean()
    return p / (np.linalg.norm(p) + 1e-6)


def _thumbnail(bgr: np.ndarray) -> np.ndarray:
    """The frame's 32x32 grey thumbnail. Every s-th pixel first (a view, ~128 px on the short
    side): grey-converting and area-shrinking a whole 1080p frame took 6.8 ms, this 0.4 ms,
    and the cuts it tells on the test clips are the same."""
    s = max(1, min(bgr.shape[:2]) // 128)
    grey = cv2.cvtColor(bgr[::s, ::s], cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


@dataclass
class Track:
    id: int
    box: tuple[float, float, float, float]
    lm5: np.ndarray
    score: float
    patch: np.ndarray
    misses: int = 0            # consecutive frames without a detection


class FaceTracker:
    def __init__(self, detector, landmarks: str = "68", detect_every: int = 5, max_lost: int = 3,
                 min_face: float = 16.0, max_faces: int | None = None, iou_threshold: float = 0.3,
                 min_similarity: float = 0.6, cut_threshold: float = 20.0):
        if detect_every < 1:
            raise ValueError("detect_every must be >= 1")
        self.detector, self.landmarks = detector, landmarks
        self.detect_every, self.max_lost = detect_every, max_lost
        self.min_face, self.max_faces = min_face, max_faces
        self.iou_threshold, self.min_similarity = iou_threshold, min_similarity
        self.cut_threshold = cut_threshold
        self.tracks: list[Track] = []
        self.next_id = 0
        self.thumb: np.ndarray | None = None     # the last frame's, to tell a scene cut
        self._hog = self._shape = None

    def _load(self) -> None:
        """dlib's HOG detector and landmark model: the full-frame detector's own when it is a
        DlibDetector (each takes 1-2 s and ~100 MB to load), else fresh ones."""
        import dlib
        self._rect = dlib.rectangle
        if isinstance(self.detector, facelib.DlibDetector) and self.detector.landmarks == self.landmarks:
            self.detector.detect(np.zeros((8, 8, 3), np.uint8))          # loads its models
            self._hog, self._shape = self.detector._hog, self.detector._shape
        else:
            self._hog = dlib.get_frontal_face_detector()
            self._shape = dlib.shape_predictor(str(facelib.find_predictor(self.landmarks)))

    def _fit(self, bgr: np.ndarray, box) -> np.ndarray:
        """Five FFHQ landmarks from dlib's predictor inside `box` (HOG and the predictor use
        channel-symmetric intensities, so BGR gives the same result as RGB)."""
        rect = self._rect(*(int(round(v)) for v in box))
        pts = np.array([(p.x, p.y) for p in self._shape(bgr, rect).parts()], np.float64)
        return facelib.landmarks5_from_68(pts) if len(pts) == 68 else facelib.landmarks5_from_dlib5(pts)

    def _roi_detect(self, bgr: np.ndarray, box) -> tuple[tuple, float] | None:
        """HOG in the region around `box`, scaled so the face is ~80 px; the best box there."""
        h, w = bgr.shape[:2]
        bw = max(box[2] - box[0], box[3] - box[1], 1.0)
        m = 0.6 * bw
        x0, y0 = max(0, int(box[0] - m)), max(0, int(box[1] - m))
        x1, y1 = min(w, int(math.ceil(box[2] + m))), min(h, int(math.ceil(box[3] + m)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        f = min(4.0, max(0.1, _ROI_FACE / bw))
        roi = cv2.resize(bgr[y0:y1, x0:x1], (max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))),
                         interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        rects, scores, _ = self._hog.run(roi, 0, 0.0)
        best = None
        for r, s in zip(rects, scores):
            cand = tuple(float(v) for v in ((np.array([r.left(), r.top(), r.right(), r.bottom()]) + 0.5) / f
                                            - 0.5 + [x0, y0, x0, y0]))
            o = iou(cand, box)
            if o >= self.iou_threshold and (best is None or o > best[2]):
                best = (cand, float(s), o)
        return None if best is None else best[:2]

    def step(self, index: int, bgr: np.ndarray) -> list[tuple[int, facelib.Face]]:
        """Update the tracks with frame `index`; returns (track id, face) for the faces in it."""
        if self._hog is None:
            self._load()
        thumb = _thumbnail(bgr)
        cut = self.thumb is not None and float(np.abs(thumb - self.thumb).mean()) > self.cut_threshold
        self.thumb = thumb
        if cut:
            self.tracks = []
        found = set()
        for t in self.tracks:
            hit = self._roi_detect(bgr, t.box)
            if hit is not None:
                t.box, t.score = hit
                t.lm5, t.misses = self._fit(bgr, t.box), 0
                found.add(t.id)
        if cut or index % self.detect_every == 0:
            dets, _ = facelib.select_faces(self.detector.detect(bgr), False, None, self.min_face, bgr.shape)
            for d in dets:
                best = max(self.tracks, key=lambda t: iou(t.box, d.box), default=None)
                if best is not None and iou(best.box, d.box) >= self.iou_threshold:
                    if best.id not in found:     # the region search missed it, the full search did not
                        best.box, best.score, best.lm5, best.misses = d.box, d.score, d.landmarks5, 0
                        found.add(best.id)
                    continue
                t = Track(self.next_id, tuple(d.box), d.landmarks5, d.score, _patch(bgr, d.landmarks5))
                self.next_id += 1
                self.tracks.append(t)
                found.add(t.id)
        kept = []
        for t in self.tracks:
            if t.id in found:
                t.patch = _patch(bgr, t.lm5)
            else:                                # refit on the last box; keep it only if it still looks alike
                t.misses += 1
                lm5 = self._fit(bgr, t.box)
                if t.misses > self.max_lost or float((_patch(bgr, lm5) * t.patch).sum()) < self.min_similarity:
                    continue
                shift = lm5.mean(0) - t.lm5.mean(0)
                t.box = tuple(float(v) for v in np.asarray(t.box) + np.tile(shift, 2))
                t.lm5 = lm5
            kept.append(t)
        deduped: list[Track] = []                # two tracks drifting onto one face: keep the older
        for t in sorted(kept, key=lambda t: t.id):
            if all(iou(t.box, o.box) < 0.5 for o in deduped):
                deduped.append(t)
        self.tracks = sorted(deduped, key=lambda t: -min(t.box[2] - t.box[0], t.box[3] - t.box[1]))
        if self.max_faces is not None:
            self.tracks = self.tracks[:self.max_faces]
        return [(t.id, facelib.Face(t.box, t.score, t.lm5.copy())) for t in self.tracks
                if min(t.box[2] - t.box[0], t.box[3] - t.box[1]) >= self.min_face]

    def state(self) -> dict:
        return {"next_id": self.next_id,
                "thumb": None if self.thumb is None else self.thumb.tolist(),
                "tracks": [{"id": t.id, "box": list(t.box), "lm5": t.lm5.tolist(), "score": t.score,
                            "patch": t.patch.tolist(), "misses": t.misses} for t in self.tracks]}

    def load(self, state: dict) -> None:
        self.next_id = state["next_id"]
        self.thumb = None if state.get("thumb") is None else np.array(state["thumb"], np.float32)
        self.tracks = [Track(d["id"], tuple(d["box"]), np.array(d["lm5"]), d["score"],
                             np.array(d["patch"], np.float32), d["misses"]) for d in state["tracks"]]


def gaussian_weights(sigma: float) -> np.ndarray:
    """Centred weights over offsets -k..k (k = ceil(2 sigma)); [1.0] when sigma is 0."""
    if sigma <= 0:
        return np.ones(1)
    k = int(math.ceil(2 * sigma))
    x = np.arange(-k, k + 1, dtype=np.float64)
    return np.exp(-0.5 * (x / sigma) ** 2)


class FramePreparer:
    """Called by pipeline.run (workers=1, so in order) once per frame; returns Prepared items.

    `frames` yields (index, bgr) in order. Past the last frame it returns items whose
    rel is END (pipeline.run may ask a few times more than there are frames).
    With `boundary_every` = N, the tracking state after each frame N*j - 1 is kept in
    `snapshots[N*j]` for the chunk writer to save (the vDR averages join it when frame
    N*j - 1 is handed out). With `vdr` (a VdrSmoother) each FaceCrop carries its smoothed vDR.
    """

    def __init__(self, frames: Iterator[tuple[int, np.ndarray]], tracker: FaceTracker, in_size: int,
                 smooth: float, path: Path, boundary_every: int | None = None, state: dict | None = None,
                 vdr=None):
        self.frames, self.tracker, self.in_size, self.path = frames, tracker, in_size, Path(path)
        self.vdr = vdr
        self.weights = gaussian_weights(smooth)
        self.k = len(self.weights) // 2
        self.boundary_every = boundary_every
        self.buffer: deque = deque()     # (index, frame, {track id: Face}) not yet returned
        self.hist: dict[int, dict[int, np.ndarray]] = {}     # track id -> frame -> raw landmarks
        self.snapshots: dict[int, dict] = {}
        self.exhausted = False           # the frame source is used up
        if state:
            tracker.load(state["tracker"])
            self.hist = {int(t): {int(i): np.array(v) for i, v in h.items()} for t, h in state["hist"].items()}
            if vdr is not None:
                vdr.load(state.get("vdr", {}))

    @property
    def finished(self) -> bool:
        """Every frame has been handed out (read from another thread: a stale False only
        means pipeline.run asks once more and gets an END item)."""
        return self.exhausted and not self.buffer

    def _pull(self) -> None:
        try:
            index, frame = next(self.frames)
        except StopIteration:
            self.exhausted = True
            return
        tracked = self.tracker.step(index, frame)
        for tid, face in tracked:
            self.hist.setdefault(tid, {})[index] = face.landmarks5
        self.buffer.append((index, frame, dict(tracked)))
        if self.boundary_every and (index + 1) % self.boundary_every == 0:
            self.snapshots[index + 1] = self.state(index + 1)

    def state(self, boundary: int) -> dict:
        live = {t.id for t in self.tracker.tracks}
        return {"tracker": self.tracker.state(),
                "hist": {str(t): {str(i): v.tolist() for i, v in h.items() if i >= boundary - self.k}
                         for t, h in self.hist.items() if t in live}}

    def smoothed(self, tid: int, index: int) -> np.ndarray:
        h = self.hist[tid]
        acc, total = np.zeros((5, 2)), 0.0
        for j, w in zip(range(index - self.k, index + self.k + 1), self.weights):
            if j in h:
                acc += w * h[j]
                total += w
        return acc / total

    def __call__(self, path, rel) -> Prepared:
        while not self.exhausted and (not self.buffer or self.buffer[-1][0] < self.buffer[0][0] + self.k):
            self._pull()
        if not self.buffer:
            return Prepared(self.path, Path(END), error=END)
        index, frame, faces = self.buffer.popleft()
        item = Prepared(self.path, Path(str(index)), bgr8=frame)
        for tid, face in faces.items():
            lm5 = self.smoothed(tid, index) if self.k else face.landmarks5
            crop, affine = facelib.align_face(frame, replace(face, landmarks5=lm5), self.in_size)
            item.faces.append(FaceCrop(crop, affine, face.box, track=tid))
        if self.vdr is not None:
            ahead = {t for _, _, f in self.buffer for t in f}
            vdrs = self.vdr.step(list(faces), [f.crop for f in item.faces], ahead)
            for f, v in zip(item.faces, vdrs):
                f.vdr = v
            if index + 1 in self.snapshots:      # its tracking part was taken when the frame was read
                self.snapshots[index + 1]["vdr"] = self.vdr.state()
        for tid in list(self.hist):              # keep only what frames index+1.. still need
            h = self.hist[tid]
            for i in [i for i in h if i <= index - self.k]:
                del h[i]
            if not h:
                del self.hist[tid]
        return item
