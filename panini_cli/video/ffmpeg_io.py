"""ffmpeg through imageio-ffmpeg's bundled binary: probing, streaming frames in, encoding settings.

Split from job.py (the job: chunks, resume, assembly) so each holds one thing.
"""
from __future__ import annotations

import queue
import re
import subprocess
import threading
from array import array
from dataclasses import dataclass, field
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
    stream: int = 0                      # index of the video stream (cover art is skipped)
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
        """Frames expected from `start` (s after the file start) for `duration` s: counted from the
        packet times, or estimated from the header when the file is damaged (the packets that
        are left then undercount)."""
        if self.times is not None and not self.damage:
            half = 0.5 / float(self.fps)
            end = np.inf if duration is None else start + duration
            return int(((self.times >= start - half) & (self.times < end - half)).sum())
        if self.duration is None:
            return self.frames
        span = self.duration - max(start, self.video_start - self.start)
        if duration is not None:
            span = min(span, duration)
        return max(0, round(span * float(self.fps)))


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
    info.stream = int(re.match(r"\s*Stream #0:(\d+)", line)[1])
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


def _packet_pts(path: Path, stream: str) -> tuple[array, str | None, str]:
    """pts of every packet of one stream (demux only, read line by line), its time base, stderr."""
    proc = subprocess.Popen([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-map", stream,
                             "-c", "copy", "-f", "framecrc", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace")
    err: list[str] = []
    drain = threading.Thread(target=lambda: err.extend(proc.stderr.readlines()[:50]), daemon=True)
    drain.start()
    pts, tb = array("q"), None
    for ln in proc.stdout:
        if ln.startswith("#tb 0:"):
            tb = ln.split(":", 1)[1].strip()
        elif ln and not ln.startswith("#"):
            try:
                pts.append(int(ln.split(",")[2]))
            except (IndexError, ValueError):
                continue
    proc.wait()
    drain.join()
    return pts, tb, "".join(err)


def _scan_packets(info: VideoInfo) -> None:
    """Count the video packets and look at their timestamps (constant or variable rate)."""
    pts, tb, stderr = _packet_pts(info.path, f"0:{info.stream}")
    errs = _error_lines(stderr)
    info.damage = errs[0] if errs else None
    info.frames = len(pts) or None
    if not tb or len(pts) < 2:
        return
    tbase = Fraction(tb)
    p = np.sort(np.frombuffer(pts, np.int64))
    info.times = (p * float(tbase) - info.start).astype(np.float64)
    d = np.diff(p)
    med = float(np.median(d))
    if med <= 0:
        return
    info.fps_range = (float(1 / (d.max() * tbase)), float(1 / (max(d.min(), 1) * tbase)))
    if info.damage:             # what is left of a damaged file says little about its timing
        return
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
        out = ["-map", f"0:{info.stream}", "-sws_flags", SWS]
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
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set() or not self._thread.is_alive():
                    return
                continue
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
    preset: str | None = "veryfast"
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
        tags = [f"{opt}={info.color[key]}" for key, opt in (("primaries", "color_primaries"), ("trc", "color_trc"),
                                                             ("space", "colorspace"), ("range", "range"))
                if key in info.color]
        if tags and not self.pix_fmt.startswith(("rgb", "bgr", "gbr")):
            vf.append("setparams=" + ":".join(tags))          # the input's colour tags, as they were
        sar = info.sar
        if sar is not None:
            if abs(info.rotation) % 180 == 90:
                sar = 1 / sar
            vf.append(f"setsar=sar={sar.numerator}/{sar.denominator}:max=65535")
        return params + ["-vf", ",".join(vf)]

    def check(self, folder: Path, suffix: str, size: tuple[int, int], info: VideoInfo) -> None:
        """Encode two frames into a `suffix` file, so a bad codec, preset, pixel format or
        container fails now, in one line, rather than after the first chunk."""
        w, h = size
        if (w % 2 or h % 2) and self.pix_fmt.startswith(("yuv420", "yuvj420", "nv12", "yuv422", "yuvj422")):
            raise VideoError(f"frames are {w}x{h}: --pix-fmt {self.pix_fmt} needs an even width and height "
                             f"(use --pix-fmt yuv444p)")
        probe_file = Path(folder) / f".encoder-check{suffix}"
        res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt",
                              "bgr24", "-s", f"{w}x{h}", "-r", str(info.fps), "-i", "-", "-c:v", self.codec,
                              "-pix_fmt", self.pix_fmt, *self.output_params(info), str(probe_file)],
                             input=bytes(w * h * 3 * 2), capture_output=True)
        probe_file.unlink(missing_ok=True)
        if res.returncode != 0:
            errs = _error_lines(res.stderr.decode(errors="replace")) or ["ffmpeg failed"]
            preset = f" --preset {self.preset}" if self.preset and self.codec in PRESET_CODECS else ""
            raise VideoError(f"cannot encode {w}x{h} {suffix} with --codec {self.codec} --pix-fmt "
                             f"{self.pix_fmt}{preset}: {errs[-1]}")


def count_packets(path: Path) -> int:
    return len(_packet_pts(path, "0:v:0")[0])


# ---------------------------------------------------------------- the partial folder
