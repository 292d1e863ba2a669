"""The chunk files of a video job in `<output>.partial/`: resume state, the encoding writer, the final join.

Kept apart from job.py (which runs the job) because both the single-process path and
the worker processes of workers.py write the same chunks through these, and a rerun reads
them back to skip finished work. assemble() joins the chunks with ffmpeg's concat demuxer
(no re-encode) and muxes the source's audio and subtitles in.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import threading
from pathlib import Path

import numpy as np

from .ffmpeg_io import Encoding, VideoError, VideoInfo, _error_lines, _ffmpeg, count_packets, probe


class Partial:
    """`<output>.partial/`: job.json, chunk_NNNNNN<ext> + chunk_NNNNNN.json per finished chunk, end.json."""

    def __init__(self, output: Path):
        self.output = Path(output)
        self.dir = self.output.with_name(self.output.name + ".partial")
        self.ext = self.output.suffix

    def chunk(self, c: int) -> Path:
        return self.dir / f"chunk_{c:06d}{self.ext}"

    def record(self, c: int) -> Path:
        return self.dir / f"chunk_{c:06d}.json"

    def finished(self, c: int) -> bool:
        return self.chunk(c).exists() and _read_json(self.record(c)) is not None

    def open(self, job: dict, resume: bool,
             keep_later: bool = False) -> tuple[int, dict | None, dict | None, str | None]:
        """Returns (finished chunks before the first gap, state after the last of them, end record, note).

        Finished chunks after the gap are deleted, unless `keep_later` (worker processes
        finish chunks out of order, and any of them can be skipped)."""
        note = None
        if self.dir.exists():
            old = _read_json(self.dir / "job.json")
            if not resume:
                note = f"discarding the unfinished run in {self.dir} (--restart)"
            elif old != job:
                note = f"settings or input changed since the unfinished run in {self.dir}; starting over"
            else:
                done = 0
                while self.finished(done):
                    done += 1
                for p in self.dir.iterdir():        # after the first gap, plans, half-written files
                    m = re.match(r"chunk_(\d+)", p.name)
                    if p.name.startswith((".", "plan_")) or (
                            m and int(m[1]) >= done and not (keep_later and self.finished(int(m[1])))):
                        p.unlink()
                end = _read_json(self.dir / "end.json")
                if end is not None and end.get("chunks") != done:
                    (self.dir / "end.json").unlink()
                    end = None
                state = _read_json(self.record(done - 1)).get("state") if done else None
                return done, state, end, None
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        _write_json(self.dir / "job.json", job)
        return 0, None, None, note

    def frames_done(self, chunks: int) -> int:
        return sum(_read_json(self.record(c))["frames"] for c in range(chunks))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class ChunkWriter:
    """A thread that pastes restored faces into frames and encodes them, chunk by chunk."""

    def __init__(self, partial: Partial, info: VideoInfo, size: tuple[int, int], enc: Encoding,
                 chunk_frames: int, first_chunk: int, in_size: int, snapshots: dict, on_frame=None,
                 maxsize: int = 4, guard=None):
        self.partial, self.info, self.size, self.enc = partial, info, size, enc
        self.chunk_frames, self.chunk, self.in_size = chunk_frames, first_chunk, in_size
        self.guard = guard              # guard.TrackGuard: which faces to paste (None: all)
        self.snapshots, self.on_frame = snapshots, on_frame
        self.q: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None
        self._gen, self._n, self._faces, self._kept, self._aborted = None, 0, 0, 0, False
        self.params = enc.output_params(info)
        self._thread = threading.Thread(target=self._run, name="video-writer", daemon=True)
        self._thread.start()

    def put(self, item) -> None:
        """item: pipeline.Prepared for one frame (its faces' results filled in) or None at the end."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise self.error or VideoError("video writer stopped")

    def _tmp(self) -> Path:
        # per process: a worker orphaned by a killed run may still be writing when the rerun starts
        return self.partial.dir / f".{self.partial.chunk(self.chunk).name}.tmp{os.getpid()}{self.partial.ext}"

    def _open(self) -> None:
        import imageio_ffmpeg
        self._gen = imageio_ffmpeg.write_frames(
            str(self._tmp()), self.size, pix_fmt_in="bgr24", pix_fmt_out=self.enc.pix_fmt, fps=self.info.fps,
            quality=None, codec=self.enc.codec, macro_block_size=1, ffmpeg_log_level="error",
            output_params=list(self.params))
        self._gen.send(None)
        self._n = self._faces = self._kept = 0

    def _close(self) -> None:
        self._gen.close()
        self._gen = None
        tmp, final = self._tmp(), self.partial.chunk(self.chunk)
        got = count_packets(tmp) if tmp.exists() else 0
        if got != self._n:
            raise VideoError(f"the encoder wrote {got} of {self._n} frames of chunk {self.chunk} "
                             f"(codec {self.enc.codec}; disk full?)")
        os.replace(tmp, final)
        boundary = (self.chunk + 1) * self.chunk_frames
        _write_json(self.partial.record(self.chunk),
                    {"frames": self._n, "faces": self._faces, "kept": self._kept,
                     "state": self.snapshots.pop(boundary, None)})
        self.chunk += 1

    def _run(self) -> None:
        from .. import faces as facelib
        try:
            while True:
                item = self.q.get()
                if item is None:
                    if self._aborted:
                        self._discard()
                    elif self._gen is not None:
                        self._close()
                    return
                if self._gen is None:
                    self._open()
                frame = item.bgr8
                for face in item.faces:
                    picture = face.results[0].image if self.guard is None else self.guard(item.bgr8, face)
                    if picture is None:
                        self._kept += 1
                    else:
                        frame = facelib.paste_back(item.bgr8, picture, face.affine, 1,
                                                   crop_size=self.in_size, background=frame)
                self._gen.send(np.ascontiguousarray(frame))
                self._n += 1
                self._faces += len(item.faces)
                if self.on_frame:
                    self.on_frame(len(item.faces))
                if self._n == self.chunk_frames:
                    self._close()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread by put()/finish()
            self.error = e if isinstance(e, VideoError) else VideoError(
                f"cannot encode: {(_error_lines(str(e)) or [str(e).splitlines()[0] if str(e) else type(e).__name__])[0]}")
            self._discard()

    def finish(self) -> None:
        self.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop without finishing the current chunk (it is deleted; finished chunks stay)."""
        self._aborted = True
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            while self._thread.is_alive():           # let the thread stop at its next frame
                try:
                    self.q.put(None, timeout=0.2)
                except queue.Full:
                    try:
                        self.q.get_nowait()
                    except queue.Empty:
                        pass
            self._thread.join()
            return
        self._discard()

    def _discard(self) -> None:
        if self._gen is not None:
            try:
                self._gen.close()
            except Exception:       # noqa: BLE001
                pass
            self._gen = None
        self._tmp().unlink(missing_ok=True)


# ---------------------------------------------------------------- joining and audio
def assemble(partial: Partial, chunks: int, info: VideoInfo, start: float, duration: float | None,
             frames: int) -> list[str]:
    """Join the chunks and mux the source's audio (and subtitles) into partial.output; returns warnings."""
    listing = partial.dir / "concat.txt"
    listing.write_text("".join(f"file '{partial.chunk(c).name}'\n" for c in range(chunks)))
    out = partial.output
    tmp = out.with_name(f"{out.stem}.panini-tmp{out.suffix}")
    offset = max(0.0, info.video_start - (info.start + start))
    base = ["-v", "error", "-y", "-f", "concat", "-safe", "0"]
    base += ["-itsoffset", f"{offset:.6f}"] if offset > 1e-4 else []
    base += ["-i", str(listing)]
    if info.audio or info.subtitles:
        base += (["-ss", f"{start:.6f}"] if start else []) + (["-t", f"{duration:.6f}"] if duration else [])
        base += ["-i", str(info.path), "-map_metadata", "1"]
    base += ["-map", "0:v:0", "-c:v", "copy"]
    if out.suffix.lower() in (".mp4", ".mov", ".m4v"):
        base += ["-movflags", "+faststart"]
    a_enc = ["-c:a", "libopus", "-b:a", "128k"] if out.suffix.lower() == ".webm" else ["-c:a", "aac", "-b:a", "192k"]
    audio = ["-map", "1:a"] if info.audio else []
    subs = ["-map", "1:s", "-c:s", "copy"] if info.subtitles else []
    tries = [(audio + (["-c:a", "copy"] if audio else []) + subs, [])]
    if subs:
        tries.append((audio + (["-c:a", "copy"] if audio else []), [f"subtitles dropped: {out.suffix} cannot hold them"]))
    if audio:
        tries.append((audio + a_enc, [f"audio re-encoded to {a_enc[1]}: {out.suffix} cannot hold "
                                      f"{', '.join(sorted(set(info.audio)))} as it is"]
                      + ([f"subtitles dropped: {out.suffix} cannot hold them"] if subs else [])))
    last = "ffmpeg failed"
    for extra, warnings in tries:
        res = _ffmpeg(base + extra + [str(tmp)])
        if res.returncode == 0:
            break
        last = (_error_lines(res.stderr) or [res.stderr.strip().splitlines()[-1] if res.stderr.strip() else last])[0]
        tmp.unlink(missing_ok=True)
    else:
        raise VideoError(f"cannot write {out}: {last} (the restored chunks are kept in {partial.dir})")
    got = probe(tmp)
    if got.frames != frames or len(got.audio) != len(info.audio):
        tmp.unlink(missing_ok=True)
        raise VideoError(f"cannot write {out}: the joined file has {got.frames} frames and {len(got.audio)} audio "
                         f"stream(s), expected {frames} and {len(info.audio)} (chunks kept in {partial.dir})")
    os.replace(tmp, out)
    return warnings
