"""The batch engine shared by `restore`, `inspect` and `edit`.

inputs -> decode, detect, align (CPU worker threads, ahead of the model) ->
face crops of several images batched together -> model (one or more variants,
e.g. mask biases) -> per-image results, in input order, to the command, which
pastes and writes them (in the background, see writer.py).

A file that cannot be read or decoded becomes a failed record with a one-line
reason; the run goes on.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from . import images


@dataclass
class FaceCrop:
    crop: np.ndarray                  # uint8 BGR at the model's input size
    affine: np.ndarray                # image -> crop (2x3), at crop size
    box: tuple[float, float, float, float]
    results: list = field(default_factory=list)   # one FaceResult per variant
    vdr: np.ndarray | None = None     # a given degradation vector (video --smooth-vdr), else the DRE's
    track: int | None = None          # video: the face track it belongs to (guard.TrackGuard)


@dataclass
class Prepared:
    """One input file after decode / detect / align."""
    path: Path
    rel: Path
    image: images.Image | None = None
    bgr8: np.ndarray | None = None
    faces: list[FaceCrop] = field(default_factory=list)
    skipped_faces: list[tuple[tuple, str]] = field(default_factory=list)   # (box, reason)
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class FaceOptions:
    aligned: bool = False
    only_center_face: bool = False
    max_faces: int | None = None
    min_face: float = 16.0
    max_pixels: int | None = images.DEFAULT_MAX_PIXELS


def resize_square(bgr: np.ndarray, size: int) -> np.ndarray:
    """Resize an aligned crop to the model's input: area when shrinking, cubic when enlarging."""
    h, w = bgr.shape[:2]
    if (h, w) == (size, size):
        return bgr
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_CUBIC
    return cv2.resize(bgr, (size, size), interpolation=interp)


class Preparer:
    """Decode, detect and align one file (runs in worker threads).

    `make_detector` builds a face detector; each worker thread gets its own,
    because dlib's detector and predictor crash when two threads share one.
    """

    def __init__(self, in_size: int, options: FaceOptions, make_detector=None):
        self.in_size, self.options, self.make_detector = in_size, options, make_detector
        self._local = threading.local()

    @property
    def detector(self):
        det = getattr(self._local, "detector", None)
        if det is None:
            det = self._local.detector = self.make_detector()
        return det

    def __call__(self, path: Path, rel: Path) -> Prepared:
        item = Prepared(path, rel)
        t0 = time.perf_counter()
        try:
            item.image = images.read_image(path, max_pixels=self.options.max_pixels)
            item.bgr8 = images.to_bgr8(item.image)
        except images.ImageError as e:
            item.error = e.reason
            return item
        except Exception as e:      # noqa: BLE001 - a decoder crash must not stop the batch
            item.error = f"cannot decode: {type(e).__name__}: {e}".splitlines()[0]
            return item
        t1 = time.perf_counter()
        item.timings["decode"] = t1 - t0
        if self.options.aligned:
            h, w = item.bgr8.shape[:2]
            crop = resize_square(item.bgr8, self.in_size)
            affine = np.array([[self.in_size / w, 0, 0], [0, self.in_size / h, 0]], dtype=np.float64)
            item.faces.append(FaceCrop(crop, affine, (0.0, 0.0, float(w), float(h))))
            item.timings["align"] = time.perf_counter() - t1
            return item
        from . import faces as facelib

        try:
            found = self.detector.detect(item.bgr8)
        except Exception as e:      # noqa: BLE001
            item.error = f"face detection failed: {type(e).__name__}: {e}".splitlines()[0]
            return item
        t2 = time.perf_counter()
        kept, skipped = facelib.select_faces(found, self.options.only_center_face, self.options.max_faces,
                                             self.options.min_face, item.bgr8.shape)
        for face in kept:
            crop, affine = facelib.align_face(item.bgr8, face, self.in_size)
            item.faces.append(FaceCrop(crop, affine, tuple(float(v) for v in face.box)))
        item.skipped_faces = [(tuple(float(v) for v in f.box), reason) for f, reason in skipped]
        item.timings["detect"] = t2 - t1
        item.timings["align"] = time.perf_counter() - t2
        return item


def run(jobs: Iterable[tuple[Path, Path]], preparer: Preparer, restorer, variants: list[dict],
        batch_size: int = 4, workers: int = 2, prefetch: int = 8, streams: int = 1) -> Iterator[Prepared]:
    """Yield every job as a Prepared, in input order, with each face's results filled in.

    `variants` are keyword sets for the restorer (e.g. [{}] for restore, or one
    mask bias each for edit); face.results[i] belongs to variants[i]. Files are
    prepared `prefetch` ahead by `workers` threads while the model runs.

    `streams` > 1 runs that many batches through the model at once, each in its own
    thread (torch releases the GIL inside its ops). On a CPU, S streams of one torch
    thread each keep S cores busy with no barrier between them, where one stream of S
    threads idles cores at every small op, and a core that the decoder or the tracker
    takes for a moment stalls only one stream (commands/video.py cpu_streams).
    """
    jobs = iter(jobs)
    pending: deque[Future] = deque()
    ready: deque[Prepared] = deque()             # prepared, waiting for their faces' results
    queue: list[tuple[Prepared, FaceCrop]] = []  # faces not yet run
    running: deque[Future] = deque()             # batches in the model (streams > 1)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="prepare") as pool, \
            ThreadPoolExecutor(max_workers=max(1, streams), thread_name_prefix="model") as model_pool:
        def refill():
            while len(pending) < prefetch:
                try:
                    path, rel = next(jobs)
                except StopIteration:
                    return
                pending.append(pool.submit(preparer, Path(path), Path(rel)))

        def flush(n: int):
            batch, rest = queue[:n], queue[n:]
            queue[:] = rest
            if streams <= 1:
                run_batch(batch)
                return
            while len(running) >= streams:
                running.popleft().result()           # raises what the model raised
            running.append(model_pool.submit(run_batch, batch))

        def done(face: FaceCrop) -> bool:
            return len(face.results) == len(variants)

        def run_batch(batch):
            t = time.perf_counter()
            vdrs = [face.vdr for _, face in batch]
            given = {} if all(v is None for v in vdrs) else {"vdr": np.stack(vdrs)}  # all or none have one
            for kwargs in variants:
                results = restorer([face.crop for _, face in batch], **given, **kwargs)
                for (_, face), res in zip(batch, results):
                    face.results.append(res)
            share = (time.perf_counter() - t) / max(1, len(batch))
            for item, _ in batch:
                item.timings["model"] = item.timings.get("model", 0.0) + share

        refill()
        while pending or queue:
            if pending:
                item = pending.popleft().result()
                refill()
                ready.append(item)
                queue.extend((item, f) for f in item.faces)
                while len(queue) >= batch_size:
                    flush(batch_size)
            else:
                flush(len(queue))
            while running and running[0].done():
                running.popleft().result()
            while ready and all(done(f) for f in ready[0].faces):
                yield ready.popleft()
        while running:
            running.popleft().result()
        while ready:
            yield ready.popleft()
