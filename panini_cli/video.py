"""Streaming video restoration: probe, decode, track, restore, encode by chunk, mux audio.

Frames never pile up: ffmpeg decodes into a bounded queue (imageio_ffmpeg.read_frames),
tracking.FramePreparer turns them into pipeline items (pipeline.run batches faces across
frames and runs the model), and a writer thread pastes the faces back and streams the
frames into ffmpeg (imageio_ffmpeg.write_frames), so memory is a few dozen frames
whatever the length. Frames go into chunk files of `chunk_frames` in `<output>.partial/`;
each finished chunk is checked and saved with the tracking state, so a rerun of the same
command skips them. At the end the chunks are joined with ffmpeg's concat demuxer
(no re-encode) and the source's audio is muxed in: copied when the container takes it,
else re-encoded (aac; opus for webm) with a warning, never dropped.

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
import os
import queue
import re
import shutil
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

SWS = "accurate_rnd+full_chroma_int"
_MATRIX = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "bt2020nc": "bt2020",
           "bt2020c": "bt2020", "smpte240m": "smpte240m", "fcc": "fcc"}
_NTSC = [Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120)]
CRF_CODECS = {"libx264", "libx264rgb", "libx265", "libvpx-vp9", "libaom-av1", "libsvtav1"}
PRESET_CODECS = {"libx264", "libx264rgb", "libx265"}


class VideoError(Exception):
    """A video that cannot be read, encoded or muxed; str() is one line."""


def ffmpeg_exe() -> str:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *args], capture_output=True, text=True,
                          errors="replace")


def _error_lines(text: str) -> list[str]:
    """ffmpeg's complaint lines, without the '[demuxer @ 0x..]' prefixes and progress noise."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", line.strip())
        low = line.lower()
        if line and not line.startswith(("frame=", "size=", "video:", "Press")) and (
                "error" in low or "invalid" in low or "partial file" in low or "not found" in low
                or "no such file" in low or "could not" in low or "not supported" in low or "corrupt" in low):
            out.append(line)
    return out


def _split_top(s: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()]


def parse_time(value: str | float | None) -> float | None:
    """Seconds from '83.5', '1:23.5' or '0:01:23.5'."""
    if value is None or value == "":
        return None
    try:
        secs = 0.0
        for part in str(value).split(":"):
            secs = secs * 60 + float(part)
    except ValueError:
        raise VideoError(f"not a time: {value!r} (use seconds or [hh:]mm:ss)") from None
    if secs < 0:
        raise VideoError(f"time must not be negative: {value!r}")
    return secs


@dataclass
class VideoInfo:
    path: Path
    codec: str = ""
    pix_fmt: str = ""
    width: int = 0                       # as stored; frames come out rotated when `rotation` is +-90
    height: int = 0
    rotation: float = 0.0
    sar: Fraction | None = None
    color: dict = field(default_factory=dict)    # range, space, primaries, trc when tagged
    fps: Fraction = Fraction(25)
    vfr: bool = False
    fps_range: tuple[float, float] = (0.0, 0.0)
    frames: int | None = None            # video packets in the file
    duration: float | None = None
    start: float = 0.0                   # the file's start time (ffmpeg maps it to 0)
    video_start: float = 0.0
    audio: list[str] = field(default_factory=list)
    subtitles: int = 0
    damage: str | None = None            # first complaint while reading every packet
    times: np.ndarray | None = field(default=None, repr=False)   # packet times in s, sorted, from `start`

    def frames_between(self, start: float, duration: float | None) -> int | None:
        if self.times is None:
            return None
        half = 0.5 / float(self.fps)
        end = np.inf if duration is None else start + duration
        return int(((self.times >= start - half) & (self.times < end - half)).sum())


def probe(path: Path) -> VideoInfo:
    """What ffmpeg says about `path`, and a demux pass over its video packets (no decoding)."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    info = VideoInfo(path)
    text = _ffmpeg(["-i", str(path)]).stderr
    video = [ln for ln in text.splitlines() if re.match(r"\s*Stream #0:\d+.*: Video: ", ln)
             and "attached pic" not in ln]
    if not video:
        errs = _error_lines(text)
        raise VideoError(f"{path}: cannot read video: {errs[0] if errs else 'no video stream'}")
    m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    if m:
        info.duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    m = re.search(r"Duration: .*?start: (-?[\d.]+)", text)
    info.start = float(m[1]) if m else 0.0
    line = video[0]
    parts = _split_top(line.split(": Video: ", 1)[1])
    info.codec = parts[0].split()[0]
    pm = re.match(r"(\w+)(?:\((.*)\))?", parts[1] if len(parts) > 1 else "")
    if pm:
        info.pix_fmt = pm[1]
        tags = [t.strip() for t in (pm[2] or "").split(",")]
        for t in tags:
            if t in ("tv", "pc"):
                info.color["range"] = t
            elif "/" in t or t in _MATRIX or t in ("bt470m", "smpte240m", "bt2020"):
                sp = t.split("/")
                names = ("space", "primaries", "trc")
                for name, v in zip(names, sp if len(sp) == 3 else sp * 3):
                    if v not in ("unknown", "reserved"):
                        info.color[name] = v
    sm = re.search(r", (\d+)x(\d+)", line)
    if sm:
        info.width, info.height = int(sm[1]), int(sm[2])
    sm = re.search(r"SAR (\d+):(\d+)", line)
    if sm and int(sm[1]) and int(sm[2]) and sm[1] != sm[2]:
        info.sar = Fraction(int(sm[1]), int(sm[2]))
    sm = re.search(r"start (-?[\d.]+)", line)
    info.video_start = float(sm[1]) if sm else info.start
    sm = re.search(r"([\d.]+) fps", line) or re.search(r"([\d.]+)k? tbr", line)
    if sm:
        info.fps = _snap(Fraction(sm[1]).limit_denominator(1001))
    rm = re.search(r"rotation of (-?[\d.]+) degrees", text)
    info.rotation = float(rm[1]) if rm else 0.0
    info.audio = [re.search(r": Audio: (\w+)", ln)[1] for ln in text.splitlines()
                  if re.match(r"\s*Stream #0:\d+.*: Audio: \w+", ln)]
    info.subtitles = len([ln for ln in text.splitlines() if re.match(r"\s*Stream #0:\d+.*: Subtitle: ", ln)])
    _scan_packets(info)
    return info


def _snap(fps: Fraction) -> Fraction:
    for n in _NTSC:
        if abs(fps - n) / n < Fraction(1, 2000):
            return n
    return fps


def _scan_packets(info: VideoInfo) -> None:
    """Count the video packets and look at their timestamps (constant or variable rate)."""
    res = _ffmpeg(["-v", "error", "-i", str(info.path), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"])
    errs = _error_lines(res.stderr)
    info.damage = errs[0] if errs else None
    tb = re.search(r"#tb 0: (\d+)/(\d+)", res.stdout)
    pts = []
    for ln in res.stdout.splitlines():
        if ln and not ln.startswith("#"):
            f = ln.split(",")
            try:
                pts.append(int(f[2]))
            except (IndexError, ValueError):
                continue
    info.frames = len(pts) or None
    if not tb or len(pts) < 2:
        return
    tbase = Fraction(int(tb[1]), int(tb[2]))
    p = np.sort(np.array(pts, np.int64))
    info.times = (p * float(tbase) - info.start).astype(np.float64)
    d = np.diff(p)
    med = float(np.median(d))
    if med <= 0:
        return
    info.fps_range = (float(1 / (d.max() * tbase)), float(1 / (max(d.min(), 1) * tbase)))
    if np.any(np.abs(d - med) > max(1.0, 0.25 * med)):
        info.vfr = True
        info.fps = Fraction((len(p) - 1) / float((p[-1] - p[0]) * tbase)).limit_denominator(1001)
    else:
        info.fps = _snap(1 / (Fraction(med).limit_denominator(1 << 20) * tbase))


# ---------------------------------------------------------------- decoding
class FrameReader:
    """Decodes frames (BGR uint8) in a background thread into a bounded queue.

    Frames before `skip` (already done by an interrupted run) are decoded and dropped.
    After iteration: `count` frames were decoded, `error` is ffmpeg's complaint if any.
    """

    def __init__(self, info: VideoInfo, start: float = 0.0, duration: float | None = None, skip: int = 0,
                 maxsize: int = 4):
        self.info, self.skip = info, skip
        self.q: queue.Queue = queue.Queue(maxsize)
        self.count, self.error, self.size = 0, None, None
        self._stop = threading.Event()
        self._ready = threading.Event()
        inp = ["-ss", f"{start:.6f}"] if start else []
        out = ["-map", "0:v:0", "-sws_flags", SWS]
        out += ["-fps_mode", "cfr", "-r", str(info.fps)] if info.vfr else ["-fps_mode", "passthrough"]
        if duration is not None:
            out += ["-t", f"{duration:.6f}"]
        self._args = dict(pix_fmt="bgr24", input_params=inp, output_params=out)
        self._thread = threading.Thread(target=self._run, name="video-reader", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.error and self.size is None:
            raise VideoError(f"{info.path}: cannot decode: {self.error}")

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        import imageio_ffmpeg
        log = None
        try:
            gen = imageio_ffmpeg.read_frames(str(self.info.path), **self._args)
            meta = next(gen)
            frame = gen.gi_frame
            log = frame.f_locals.get("log_catcher") if frame is not None else None
            self.size = meta["size"]
            self._ready.set()
            w, h = self.size
            for raw in gen:
                i = self.count
                self.count += 1
                if i >= self.skip and not self._put((i, np.frombuffer(raw, np.uint8).reshape(h, w, 3))):
                    gen.close()
                    break
            if log is not None:
                errs = _error_lines(log.get_text(0.5))
                self.error = errs[0] if errs else None
        except Exception as e:       # noqa: BLE001 - reported as one line by the caller
            lines = _error_lines(str(e)) or [str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__]
            self.error = lines[0]
        finally:
            self._ready.set()
            self._put(None)

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------- encoding
@dataclass
class Encoding:
    codec: str = "libx264"
    crf: int | None = 18
    preset: str | None = "medium"
    pix_fmt: str = "yuv420p"

    def output_params(self, info: VideoInfo) -> list[str]:
        params = []
        if self.crf is not None and self.codec in CRF_CODECS:
            params += ["-crf", str(self.crf)] + (["-b:v", "0"] if self.codec == "libvpx-vp9" else [])
        if self.preset and self.codec in PRESET_CODECS:
            params += ["-preset", self.preset]
        scale = f"scale=flags={SWS}"
        if self.codec != "libx264rgb" and not self.pix_fmt.startswith(("rgb", "bgr", "gbr")):
            if info.color.get("space") in _MATRIX:
                scale += f":out_color_matrix={_MATRIX[info.color['space']]}"
            if "range" in info.color:
                scale += f":out_range={info.color['range']}"
        vf = [scale]
        sar = info.sar
        if sar is not None:
            if abs(info.rotation) % 180 == 90:
                sar = 1 / sar
            vf.append(f"setsar={sar.numerator}/{sar.denominator}")
        params += ["-vf", ",".join(vf)]
        for key, opt in (("range", "-color_range"), ("space", "-colorspace"), ("primaries", "-color_primaries"),
                         ("trc", "-color_trc")):
            if key in info.color:
                params += [opt, info.color[key]]
        return params

    def check(self, suffix: str, size: tuple[int, int], info: VideoInfo) -> None:
        """Encode two frames at `size`, so a bad codec, preset or pixel format fails now, in one line."""
        w, h = size
        res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-v", "error", "-f", "rawvideo", "-pix_fmt", "bgr24",
                              "-s", f"{w}x{h}", "-r", str(info.fps), "-i", "-", "-c:v", self.codec,
                              "-pix_fmt", self.pix_fmt, *self.output_params(info), "-f", "null", "-"],
                             input=bytes(w * h * 3 * 2), capture_output=True)
        if res.returncode != 0:
            errs = _error_lines(res.stderr.decode(errors="replace")) or ["ffmpeg failed"]
            raise VideoError(f"cannot encode {w}x{h} with --codec {self.codec} --pix-fmt {self.pix_fmt}"
                             f"{' --preset ' + self.preset if self.preset and self.codec in PRESET_CODECS else ''}: "
                             f"{errs[-1]}")


def count_packets(path: Path) -> int:
    res = _ffmpeg(["-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"])
    return sum(1 for ln in res.stdout.splitlines() if ln and not ln.startswith("#"))


# ---------------------------------------------------------------- the partial folder
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

    def open(self, job: dict, resume: bool) -> tuple[int, dict | None, dict | None, str | None]:
        """Returns (finished chunks, state after the last one, end record, note)."""
        note = None
        if self.dir.exists():
            old = _read_json(self.dir / "job.json")
            if not resume:
                note = f"discarding the unfinished run in {self.dir} (--restart)"
            elif old != job:
                note = f"settings or input changed since the unfinished run in {self.dir}; starting over"
            else:
                done = 0
                while self.chunk(done).exists() and _read_json(self.record(done)) is not None:
                    done += 1
                for p in self.dir.iterdir():        # anything after the first gap, and half-written files
                    m = re.match(r"chunk_(\d+)", p.name)
                    if p.name.startswith(".") or (m and int(m[1]) >= done):
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
                 maxsize: int = 4):
        self.partial, self.info, self.size, self.enc = partial, info, size, enc
        self.chunk_frames, self.chunk, self.in_size = chunk_frames, first_chunk, in_size
        self.snapshots, self.on_frame = snapshots, on_frame
        self.q: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None
        self._gen, self._n, self._faces = None, 0, 0
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
        return self.partial.dir / f".{self.partial.chunk(self.chunk).name}.tmp{self.partial.ext}"

    def _open(self) -> None:
        import imageio_ffmpeg
        self._gen = imageio_ffmpeg.write_frames(
            str(self._tmp()), self.size, pix_fmt_in="bgr24", pix_fmt_out=self.enc.pix_fmt, fps=self.info.fps,
            quality=None, codec=self.enc.codec, macro_block_size=1, ffmpeg_log_level="error",
            output_params=list(self.params))
        self._gen.send(None)
        self._n = self._faces = 0

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
                    {"frames": self._n, "faces": self._faces, "state": self.snapshots.pop(boundary, None)})
        self.chunk += 1

    def _run(self) -> None:
        from . import faces as facelib
        try:
            while True:
                item = self.q.get()
                if item is None:
                    if self._gen is not None:
                        self._close()
                    return
                frame = item.bgr8
                for face in item.faces:
                    frame = facelib.paste_back(item.bgr8, face.results[0].image, face.affine, 1,
                                               crop_size=self.in_size, background=frame)
                if self._gen is None:
                    self._open()
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
            self.abort()

    def finish(self) -> None:
        self.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop without finishing the current chunk (it is deleted; finished ones stay)."""
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


# ---------------------------------------------------------------- the whole job
@dataclass
class Settings:
    start: float = 0.0
    duration: float | None = None
    smooth: float = 2.0
    detect_every: int = 5
    chunk_frames: int = 250
    landmarks: str = "68"
    min_face: float = 16.0
    max_faces: int | None = None
    encoding: Encoding = field(default_factory=Encoding)


def restore_video(src: Path, out: Path, settings: Settings, restorer, model_id: str, detector,
                  batch_size: int = 1, resume: bool = True, events=None) -> dict:
    """Restore every frame of `src` into `out`. `events(kind, **data)` hears: note, start, frame.

    Raises VideoError; on a damaged input the frames that could be decoded are written
    (summary["error"] says what happened). Interrupted runs leave their finished chunks.
    """
    from . import pipeline
    from .tracking import END, FaceTracker, FramePreparer

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
    done, state, end, note = partial.open(job, resume)
    if note:
        events("note", text=note)
    skip = partial.frames_done(done) if done else 0
    if done:
        events("note", text=f"resuming: {done} finished chunk(s), {skip} frames, kept from the last run")
    error = end.get("error") if end else None
    if end is None:
        reader = FrameReader(info, s.start, s.duration, skip=skip)
        size = reader.size
        s.encoding.check(out.suffix, size, info)
        tracker = FaceTracker(detector, s.landmarks, s.detect_every, max(2, s.detect_every), s.min_face, s.max_faces)
        frames = iter(reader)
        preparer = FramePreparer(frames, tracker, restorer.in_size, s.smooth, src, s.chunk_frames, state)
        writer = ChunkWriter(partial, info, size, s.encoding, s.chunk_frames, done, restorer.in_size,
                             preparer.snapshots, on_frame=lambda n: events("frame", faces=n))
        events("start", total=expected, done=skip)

        def jobs():
            while not preparer.exhausted:
                yield src, Path("frame")
        try:
            for item in pipeline.run(jobs(), preparer, restorer, [{}], batch_size=batch_size, workers=1,
                                     prefetch=max(4, batch_size + 2)):
                if item.rel != Path(END):
                    writer.put(item)
            writer.finish()
        except BaseException:
            writer.abort()
            reader.close()
            raise
        reader.close()
        total = reader.count
        if reader.error and (expected is None or total < expected):
            error = f"damaged or truncated input: decoded {total} of {expected or '?'} frames ({reader.error})"
        elif expected is not None and total < expected - 2:
            error = f"decoded only {total} of {expected} frames (damaged or truncated input?)"
        if total == 0 or total <= skip and done == 0:
            raise VideoError(f"{src}: no frames decoded{': ' + reader.error if reader.error else ''}")
        _write_json(partial.dir / "end.json", {"frames": total, "chunks": writer.chunk, "error": error})
        chunks = writer.chunk
    else:
        total, chunks = end["frames"], end["chunks"]
        events("start", total=total, done=total)
    warnings = assemble(partial, chunks, info, s.start, s.duration, total)
    for w in warnings:
        events("note", text=w)
    faces = sum(_read_json(partial.record(c))["faces"] for c in range(chunks))
    shutil.rmtree(partial.dir, ignore_errors=True)
    return {"input": str(src), "output": str(out), "frames": total, "faces": faces, "resumed_chunks": done,
            "fps": float(info.fps), "vfr": info.vfr, "audio_streams": len(info.audio), "warnings": warnings,
            "error": error}
