"""Streaming video restoration: probe, decode, track, restore, encode by chunk, mux audio.

Frames never pile up: ffmpeg decodes into a bounded queue (imageio_ffmpeg.read_frames),
tracking.FramePreparer turns them into pipeline items (pipeline.run batches faces across
frames and runs the model), and a writer thread pastes the faces back and streams the
frames into ffmpeg (imageio_ffmpeg.write_frames), so memory is a few dozen frames
whatever the length. Frames go into chunk files of `chunk_frames` in `<output>.partial/`;
each finished chunk is checked and saved with the tracking state, so a rerun of the same
command skips them. At the end the chunks are joined with ffmpeg's concat demuxer
(no re-encode) and the source's audio is muxed in: copied when the container takes it,
else re-encoded (aac; opus for webm) with a warning, never dropped. The chunk files,
the writer thread and the join live in chunks.py; this module runs the job.

Timing: a constant-rate input keeps every frame, its exact rate, and the offset between
its video and audio starts. A variable-rate input (frame durations differ by >25%) is
read at its average rate (ffmpeg duplicates or drops frames so audio stays in sync), and
the command says so. Rotation metadata is applied to the pixels (ffmpeg's autorotate), so
the output is upright without it. Colour: decoded and encoded with the input's own matrix
and range (accurate rounding), and its colour tags are copied, so frames without a face
come back within codec loss.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from .chunks import ChunkWriter, Partial, _read_json, _write_json, assemble
from .ffmpeg_io import VideoError, probe
from .settings import Settings, make_tracker, open_reader, track_guard


# ---------------------------------------------------------------- the whole job
def restore_video(src: Path, out: Path, settings: Settings, restorer, model_id: str, detector,
                  batch_size: int = 1, resume: bool = True, events=None, workers=None, streams: int = 1) -> dict:
    """Restore every frame of `src` into `out`. `events(kind, **data)` hears: note, start, frame.

    `workers` (workers.Workers) spreads the chunks over one process per device;
    `restorer` is then unused. `streams` batches run through the model at once (pipeline.run).
    Raises VideoError; on a damaged input the frames that could
    be decoded are written (summary["error"] says what happened). Interrupted runs leave
    their finished chunks.
    """
    events = events or (lambda kind, **data: None)
    s = settings
    info = probe(src)
    if info.vfr:
        events("note", text=f"variable frame rate ({info.fps_range[0]:.2f}-{info.fps_range[1]:.2f} fps): "
                            f"the output is constant at the average {float(info.fps):.3f} fps; ffmpeg repeats "
                            f"or drops frames to keep the audio in sync")
    expected = info.frames_between(s.start, s.duration)
    job = {"input": str(Path(src).resolve()), "input_bytes": Path(src).stat().st_size,
           "input_mtime_ns": Path(src).stat().st_mtime_ns, "model": model_id,
           "settings": json.loads(json.dumps(asdict(s)))}
    partial = Partial(out)
    done, state, end, note = partial.open(job, resume, keep_later=workers is not None)
    if note:
        events("note", text=note)
    skip = partial.frames_done(done) if done else 0
    resumed = done
    error = end.get("error") if end else None
    if end is None:
        if workers is None:
            if done:
                events("note", text=f"resuming: {done} finished chunk(s), {skip} frames, kept from the last run")
            total, decode_error, chunks = _restore_chunks(src, partial, info, s, restorer, detector, batch_size,
                                                          done, state, skip, expected, events, streams)
        else:
            from .workers import restore_chunks
            total, decode_error, chunks, resumed = restore_chunks(src, partial, info, s, workers, detector,
                                                                  done, state, skip, expected, events)
        error = _decode_outcome(src, partial, s, info, expected, skip, total, decode_error)
        _write_json(partial.dir / "end.json", {"frames": total, "chunks": chunks, "error": error})
    else:
        total, chunks = end["frames"], end["chunks"]
        if done:
            events("note", text=f"resuming: {done} finished chunk(s), {skip} frames, kept from the last run")
        events("start", total=total, done=total)
    warnings = assemble(partial, chunks, info, s.start, s.duration, total)
    for w in warnings:
        events("note", text=w)
    records = [_read_json(partial.record(c)) for c in range(chunks)]
    faces, kept = sum(r["faces"] for r in records), sum(r.get("kept", 0) for r in records)
    shutil.rmtree(partial.dir, ignore_errors=True)
    return {"input": str(src), "output": str(out), "frames": total, "faces": faces, "faces_kept": kept,
            "resumed_chunks": resumed,
            "fps": float(info.fps), "vfr": info.vfr, "audio_streams": len(info.audio), "warnings": warnings,
            "error": error}


def _restore_chunks(src, partial, info, s, restorer, detector, batch_size, done, state, skip, expected, events,
                    streams=1):
    """This process decodes, tracks, restores and encodes; returns (frames, decode error, chunks)."""
    from .. import pipeline
    from .tracking import END, FramePreparer
    from .vdr_smoothing import smoother_for

    reader = open_reader(src, partial, info, s, skip, done)
    tracker = make_tracker(s, detector, float(info.fps))
    preparer = FramePreparer(iter(reader), tracker, restorer.in_size, s.smooth, src, s.chunk_frames, state,
                             smoother_for(restorer.model, s.smooth_vdr, restorer.device))
    writer = ChunkWriter(partial, info, reader.size, s.encoding, s.chunk_frames, done, restorer.in_size,
                         preparer.snapshots, on_frame=lambda n: events("frame", faces=n),
                         guard=track_guard(s, restorer))
    events("start", total=expected, done=skip)

    def jobs():
        while not preparer.finished:
            yield src, Path("frame")
    items = pipeline.run(jobs(), preparer, restorer, [{}], batch_size=batch_size, workers=1,
                         prefetch=max(4, streams * batch_size + 2), streams=streams)
    try:
        for item in items:
            if item.rel != Path(END):
                writer.put(item)
        writer.finish()
    except BaseException:
        reader.close()           # first, so the preparer thread stops waiting for frames
        items.close()
        writer.abort()
        raise
    reader.close()
    return reader.count, reader.error, writer.chunk


def _decode_outcome(src, partial, s, info, expected, skip, total, decode_error) -> str | None:
    """Raise when nothing (or less than before) was decoded; else the damage to report, if any."""
    if total == 0:
        shutil.rmtree(partial.dir, ignore_errors=True)
        raise VideoError(f"{src}: no frames decoded{': ' + decode_error if decode_error else ''}"
                         f"{' (is --start past the end?)' if s.start and not decode_error else ''}")
    if total < skip:
        raise VideoError(f"{src}: now decodes to {total} frames, fewer than the {skip} already restored "
                         f"in {partial.dir}; rerun with --restart")
    if decode_error and (expected is None or total < expected):
        return f"damaged or truncated input: decoded {total} of {expected or '?'} frames ({decode_error})"
    if expected is not None and not info.vfr and total < expected - 2:
        return f"decoded only {total} of {expected} frames (damaged or truncated input?)"
    return None
