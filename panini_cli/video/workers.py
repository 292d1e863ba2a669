"""`panini video --gpus`: the chunks of one video restored by one worker process per device.

Tracking cannot be split: each chunk starts from the tracks and the smoothing window
that the frames before it left. So it stays in this process, where a planner thread
decodes and tracks every frame once, as the single-process path does, and writes per
chunk `plan_NNNNNN.json` in `<output>.partial/`: each frame's faces (box and the
image->crop affine, and with --smooth-vdr its vDR smoothed here, see vdr_smoothing;
JSON keeps float64 exactly) and the tracking state at the chunk's end. Worker processes
(sharding.run_workers: one per device, a shared queue of chunk numbers, so a fast
device is never held up by a slow one) wait for the plan of their
chunk, decode the video themselves (only a few numbers cross processes, never frames;
the frames of other chunks are decoded and dropped), cut the crops with the planned
affines, run the model, and paste back and encode the chunk with chunks.ChunkWriter.
Every step sees the same numbers as in the single-process path, so the frames are
the same (on GPUs, up to the batch composition: a batch never spans two chunks here).

Workers finish chunks out of order; an interrupted run keeps every finished chunk, and
a rerun skips them whichever worker made them (tracking is redone from the first gap).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ffmpeg_io import FrameReader, VideoError, VideoInfo
from .settings import Settings, make_tracker, open_reader, track_guard
from .chunks import ChunkWriter, Partial, _read_json, _write_json

_POLL = 0.05          # s between looks for a plan


@dataclass
class Workers:
    """The devices (one process each) and how each loads the model."""
    devices: list[str]
    model: str
    precision: str
    batch_size: int | None
    in_size: int
    dre: object = None        # the model's DRE on the CPU, for --smooth-vdr (None: the model has none)


@dataclass
class ChunkJob:
    """What a worker process needs (picklable: it crosses a spawn)."""
    src: Path
    out: Path
    info: VideoInfo
    settings: Settings
    model: str
    precision: str
    batch_size: int | None
    processes: int


def _plan_path(partial: Partial, c: int) -> Path:
    return partial.dir / f"plan_{c:06d}.json"


def _end_path(partial: Partial) -> Path:
    return partial.dir / "plan_end.json"


class Planner:
    """A thread that tracks every frame from chunk `first_chunk` on and writes one plan per chunk,
    then plan_end.json ({"chunks": n}, or {"aborted": true} when it failed or was stopped)."""

    def __init__(self, partial: Partial, reader: FrameReader, tracker, in_size: int, s: Settings, src: Path,
                 first_chunk: int, state: dict | None, vdr=None):
        from .tracking import FramePreparer

        self.partial, self.reader, self.s, self.src, self.first_chunk = partial, reader, s, src, first_chunk
        self.preparer = FramePreparer(iter(reader), tracker, in_size, s.smooth, src, s.chunk_frames, state, vdr)
        self.chunks: int | None = None
        self.error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="video-planner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from .tracking import END

        n = self.s.chunk_frames
        c, faces, vdr = self.first_chunk, [], self.preparer.vdr is not None
        try:
            while not self._stop:
                item = self.preparer(self.src, Path("frame"))
                if item.rel == Path(END):
                    break
                faces.append([[[float(v) for v in f.box], f.affine.tolist(), f.track, *([f.vdr.tolist()] if vdr else [])]
                              for f in item.faces])
                if len(faces) == n:
                    self._write(c, faces)
                    c, faces = c + 1, []
            if self._stop:
                raise VideoError("stopped")
            if faces:
                self._write(c, faces)
                c += 1
            self.chunks = c
            _write_json(_end_path(self.partial), {"chunks": c})
        except BaseException as e:  # noqa: BLE001 - raised by join() in the main thread
            self.error = e
            _write_json(_end_path(self.partial), {"aborted": True})

    def _write(self, c: int, faces: list) -> None:
        n = self.s.chunk_frames
        _write_json(_plan_path(self.partial, c), {"first": c * n, "faces": faces,
                                                  "state": self.preparer.snapshots.pop((c + 1) * n, None)})

    def stop(self) -> None:
        self._stop = True
        self.reader.close()          # the preparer stops waiting for frames
        self._thread.join()

    def join(self) -> int:
        """Wait for the last plan; returns the number of chunks."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.chunks


def restore_chunks(src: Path, partial: Partial, info: VideoInfo, s: Settings, workers: Workers, detector,
                   done: int, state: dict | None, skip: int, expected: int | None, events):
    """Plan here, restore in the workers; returns (frames, decode error, chunks, chunks kept from before)."""
    from panini_models import sharding

    from .vdr_smoothing import smoother_for

    kept = [c for c in _numbered(partial, "chunk_") if c >= done and partial.finished(c)]
    if done or kept:
        events("note", text=f"resuming: {done + len(kept)} finished chunk(s), "
                            f"{skip + partial_frames(partial, kept)} frames, kept from the last run")
    reader = open_reader(src, partial, info, s, skip, done)
    tracker = make_tracker(s, detector, float(info.fps))
    planner = Planner(partial, reader, tracker, workers.in_size, s, src, done, state,
                      smoother_for(workers, s.smooth_vdr, workers.devices[0]))
    events("start", total=expected, done=skip + partial_frames(partial, kept))
    job = ChunkJob(Path(src), partial.output, info, s, workers.model, workers.precision, workers.batch_size,
                   len(workers.devices))
    n = s.chunk_frames
    guess = -(-expected // n) if expected else done          # the rest is queued once the planner knows
    queued = set(kept)
    try:
        todo = [c for c in range(done, guess) if c not in queued]
        while True:
            queued.update(todo)
            for kind, value in sharding.run_workers(chunk_worker, workers.devices, job, todo) if todo else ():
                if kind == "frame":
                    events("frame", faces=value)
            chunks = planner.join()
            todo = [c for c in range(done, chunks) if c not in queued]
            if not todo:
                break
    except RuntimeError as e:             # a worker failed (the others finished their chunks)
        planner.stop()
        raise VideoError(f"{e} (finished chunks are kept in {partial.dir}: run the same command again "
                         f"to resume)") from None
    except BaseException:
        planner.stop()
        raise
    missing = [c for c in range(done, chunks) if not partial.finished(c)]
    if missing:
        raise VideoError(f"chunk {missing[0]} was not written (finished chunks are kept in {partial.dir})")
    reader.close()
    return reader.count, reader.error, chunks, done + len(kept)


def _numbered(partial: Partial, prefix: str) -> list[int]:
    return sorted(int(p.stem[len(prefix):]) for p in partial.dir.glob(f"{prefix}*.json"))


def partial_frames(partial: Partial, chunks) -> int:
    return sum(_read_json(partial.record(c))["frames"] for c in chunks)


# ---------------------------------------------------------------- in the worker processes
def chunk_worker(device: str, job: ChunkJob, chunks):
    """Restore the chunks pulled from `chunks` on `device`; yields ("frame", faces) per frame."""
    import torch

    from .. import pipeline
    from ..modelopts import batch_size_that_fits, load_restorer

    if device == "cpu":           # share the cores, leaving one to decoding, planning and encoding
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.processes - 1))
    restorer = load_restorer(job.model, device, job.precision)
    bs = batch_size_that_fits(restorer, job.batch_size)
    s, partial, parent = job.settings, Partial(job.out), os.getppid()
    guard = track_guard(s, restorer)            # one per process: tracks keep their decision across chunks
    reader, frames, position = None, None, 0
    try:
        for c in chunks:
            plan = _wait_for_plan(partial, c, parent)
            if plan is None:
                continue
            first, count = plan["first"], len(plan["faces"])
            if reader is None or position > first:
                if reader is not None:
                    reader.close()
                reader = FrameReader(job.info, s.start, s.duration, skip=first)
                frames = iter(reader)
            cut = PlannedFrames(frames, first, plan["faces"], restorer.in_size, job.src, parent)
            writer = ChunkWriter(partial, job.info, reader.size, s.encoding, s.chunk_frames, c, restorer.in_size,
                                 {first + s.chunk_frames: plan["state"]}, guard=guard)
            items = pipeline.run(((job.src, Path("frame")) for _ in range(count)), cut, restorer, [{}],
                                 batch_size=bs, workers=1, prefetch=max(4, bs + 2))
            try:
                for item in items:
                    writer.put(item)
                    yield "frame", len(item.faces)
                writer.finish()
            except BaseException:
                items.close()
                writer.abort()
                raise
            position = first + count
    finally:
        if reader is not None:
            reader.close()


def _check_parent(parent: int) -> None:
    """A worker whose main process was killed stops (at its next frame) instead of writing on."""
    if os.getppid() != parent:
        raise VideoError("the main process is gone")


def _wait_for_plan(partial: Partial, c: int, parent: int) -> dict | None:
    """The plan of chunk c once the planner has written it; None past the end or after an abort."""
    while True:
        plan = _read_json(_plan_path(partial, c))
        if plan is not None:
            return plan
        end = _read_json(_end_path(partial))
        if end is not None:
            if end.get("aborted") or c >= end["chunks"]:
                return None
            plan = _read_json(_plan_path(partial, c))       # written before plan_end
            if plan is None:
                raise VideoError(f"the plan of chunk {c} is missing")
            return plan
        _check_parent(parent)
        time.sleep(_POLL)


class PlannedFrames:
    """pipeline.run's preparer in a worker: the next frame of the chunk with its planned crops."""

    def __init__(self, frames, first: int, faces: list, in_size: int, path: Path, parent: int):
        self.frames, self.first, self.faces, self.in_size, self.path = frames, first, faces, in_size, path
        self.next, self.parent = first, parent

    def __call__(self, path, rel):
        from .. import faces as facelib
        from ..pipeline import FaceCrop, Prepared

        _check_parent(self.parent)
        for index, frame in self.frames:     # frames of chunks done elsewhere are dropped
            if index >= self.next:
                break
        else:
            raise VideoError(f"frame {self.next} could not be decoded again")
        if index != self.next:
            raise VideoError(f"frame {self.next} could not be decoded again (got {index})")
        item = Prepared(self.path, Path(str(index)), bgr8=frame)
        for box, affine, track, *vdr in self.faces[index - self.first]:
            a = np.array(affine, np.float64)
            item.faces.append(FaceCrop(facelib.cut_crop(frame, a, self.in_size), a, tuple(box),
                                       vdr=np.array(vdr[0], np.float32) if vdr else None, track=track))
        self.next += 1
        return item

