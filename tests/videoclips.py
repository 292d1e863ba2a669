"""Shared by the tests/test_video*.py files: clips made on the fly or taken from ../shared,
running `panini video` in this process or in its own, and reading the result back.

One place, so the video test files (timing/audio, resume/workers, --smooth-vdr) stay short;
their `model_file` fixture is conftest's.
"""
import json
import os
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from panini_cli import video as vid
from panini_cli.app import app

from conftest import DATA, REPO, need

VIDEOS = DATA / "video"
runner = CliRunner()


def need_clip(name: str) -> Path:
    return need(VIDEOS / name)


def run(*args):
    return runner.invoke(app, ["video", *map(str, args)])


def summary_of(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])


def ffmpeg(*args):
    subprocess.run([vid.ffmpeg_exe(), "-v", "error", "-y", *map(str, args)], check=True, capture_output=True)


def span(path, stream: str):
    """(first pts, end of last frame, packets) of one stream, in seconds; None if absent."""
    out = subprocess.run([vid.ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", stream, "-c", "copy",
                          "-f", "framecrc", "-"], capture_output=True, text=True).stdout
    tb = re.search(r"#tb 0: (\d+)/(\d+)", out)
    rows = [[int(v) for v in ln.split(",")[1:4]] for ln in out.splitlines() if ln and not ln.startswith("#")]
    if not tb or not rows:
        return None
    t = int(tb[1]) / int(tb[2])
    last = max(rows, key=lambda r: r[1])
    return min(r[1] for r in rows) * t, (last[1] + last[2]) * t, len(rows)


def yuv_frames(path) -> np.ndarray:
    import imageio_ffmpeg
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="yuv420p", bits_per_pixel=12,
                                     output_params=["-fps_mode", "passthrough"])
    next(gen)
    return np.stack([np.frombuffer(b, np.uint8) for b in gen]).astype(np.float64)


def sine_wav(path, seconds: float, rate: int = 44100) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16).tobytes())
    return Path(path)


def synthetic(path, n=50, size=(160, 120), fps=25, audio=None, audio_codec="aac", extra=()):
    """A textured clip with a moving block and no face, written with write_frames."""
    import imageio_ffmpeg
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    tex = np.random.default_rng(0).integers(0, 40, (h, w, 3)).astype(np.int16)
    gen = imageio_ffmpeg.write_frames(str(path), size, pix_fmt_in="bgr24", fps=fps, quality=None, macro_block_size=1,
                                      output_params=["-crf", "10", *extra], audio_path=audio and str(audio),
                                      audio_codec=audio_codec, ffmpeg_log_level="error")
    gen.send(None)
    for i in range(n):
        f = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, i * 5 % 255)], -1).astype(np.int16) + tex
        x0 = i * 3 % (w - 30)
        f[40:70, x0:x0 + 30] = (20, 200, 240)
        gen.send(np.clip(f, 0, 255).astype(np.uint8))
    gen.close()
    return Path(path)


# 20 frames, 5 chunks, a face in each. HOG: the CNN also finds a partly hidden background
# face in some frames of keep_real_3, and these tests count faces to check workers and resume.
WORKER_ARGS = ["--duration", "1", "--chunk-frames", "4", "--detector", "hog", "-q"]


def cli(*args, **kw) -> subprocess.Popen:
    """`panini video` in its own process (worker processes are spawned from it), in its own group."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "panini_cli", "video", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def json_of(proc) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])
