"""What a video job is set to do, and the pieces every process of it builds the same way.

Shared by the job (job.py, one process) and the chunk workers (workers.py, one process
per device), so neither imports the other.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..modelopts import DEFAULT_DETECTOR
from .chunks import Partial
from .ffmpeg_io import Encoding, FrameReader, VideoError, VideoInfo


@dataclass
class Settings:
    start: float = 0.0
    duration: float | None = None
    smooth: float = 2.0
    smooth_vdr: float = 0.0          # vdr_smoothing: EMA time constant in frames, 0 = off
    detect_every: int | None = None   # None: once a second (and at every scene cut)
    chunk_frames: int = 250
    landmarks: str = "68"
    min_face: float = 16.0
    max_faces: int | None = None
    encoding: Encoding = field(default_factory=Encoding)
    force: bool = False               # guard.GuardOptions: restore every face
    strength: float = 1.0
    colour: bool = True
    detector: str = DEFAULT_DETECTOR  # the whole-frame search (tracking keeps its HOG region search)


def make_tracker(s: Settings, detector, fps: float):
    """The face tracker for these settings; the whole-frame search runs every `detect_every`
    frames, by default once a second of video (tracking.py says why not every frame)."""
    from .tracking import FaceTracker

    every = s.detect_every or max(1, round(fps))
    return FaceTracker(detector, s.landmarks, every, max(2, every), s.min_face, s.max_faces)


def track_guard(s: Settings, restorer):
    """The do-no-harm check for this video's face tracks (guard.TrackGuard)."""
    from ..guard import GuardOptions, TrackGuard

    return TrackGuard(restorer.in_size, GuardOptions(s.force, s.strength, s.colour), restorer.gate,
                      (restorer.vdr_stats or {}).get("threshold"))


def open_reader(src: Path, partial: Partial, info: VideoInfo, s: Settings, skip: int, done: int) -> FrameReader:
    """The frame reader from frame `skip`, after checking the encoder takes its frame size; a
    failure removes a partial folder that holds no finished chunk."""
    reader = None
    try:
        reader = FrameReader(info, s.start, s.duration, skip=skip)
        s.encoding.check(partial.dir, partial.ext, reader.size, info)
    except VideoError:
        if reader is not None:
            reader.close()
        if not done:
            shutil.rmtree(partial.dir, ignore_errors=True)
        raise
    return reader
