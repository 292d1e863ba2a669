"""`panini video` end to end on short clips: timing, audio, pass-through pixels, damage, resume.

Clips: synthetic ones made here with imageio_ffmpeg.write_frames (no face, so they
run fast), and two of ../shared/data/video trimmed with --start/--duration (faces).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from panini_cli import video as vid
from panini_cli.app import app
from conftest import write_small_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VIDEOS = SHARED / "data" / "video"
REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def need_clip(name: str) -> Path:
    path = VIDEOS / name
    if not path.exists():
        pytest.skip(f"{path} not found: this test needs ../shared/data/video beside the repository")
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_small_model(tmp_path_factory.mktemp("model") / "small.safetensors")


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


# ---------------------------------------------------------------- timing, audio, pixels
def test_plain_command_no_face_keeps_frames_timing_audio_and_pixels(model_file, tmp_path, monkeypatch):
    from panini_models import registry
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / "default.safetensors").write_bytes(model_file.read_bytes())
    monkeypatch.setattr(registry, "PACKAGE_WEIGHTS", bundled)       # as if the default model shipped
    clip = synthetic(tmp_path / "clip.mp4", audio=sine_wav(tmp_path / "a.wav", 2.0))
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["video", "clip.mp4"])                 # exactly the user's example
    assert res.exit_code == 0, res.output
    out = tmp_path / "clip_restored.mp4"
    assert out.exists() and not (tmp_path / "clip_restored.mp4.partial").exists()
    src, got = vid.probe(clip), vid.probe(out)
    assert got.frames == src.frames == 50 and got.fps == src.fps == 25
    assert got.audio == ["aac"]
    v_in, v_out = span(clip, "0:v:0"), span(out, "0:v:0")
    assert v_out[:2] == pytest.approx(v_in[:2], abs=1e-3)
    a_in, a_out = span(clip, "0:a:0"), span(out, "0:a:0")
    assert a_out[1] - a_out[0] == pytest.approx(a_in[1] - a_in[0], abs=0.03)
    # no face: the frames come back within codec loss, with no colour shift
    a, b = yuv_frames(clip), yuv_frames(out)
    assert a.shape == b.shape == (50, 160 * 120 * 3 // 2)
    d = b - a
    assert 10 * np.log10(255 ** 2 / (d ** 2).mean()) > 40 and abs(d.mean()) < 0.3
    # and refuse to overwrite it on a rerun
    res = runner.invoke(app, ["video", "clip.mp4"])
    assert res.exit_code == 1 and "exists" in res.output


def test_real_clip_with_audio_offset_and_faces(model_file, tmp_path):
    clip = need_clip("facerec_short_hamilton_clip.mp4")        # video starts 0.84 s after the audio
    out = tmp_path / "ham.mp4"
    s = summary_of(run(clip, "-o", out, "-m", model_file, "--duration", "1.2", "--json"))
    src, got = vid.probe(clip), vid.probe(out)
    assert got.frames == s["frames"] == src.frames_between(0, 1.2) > 8
    assert got.fps == src.fps and s["faces"] > 0
    assert got.color.get("space") == "bt709"                        # colour tags kept
    v_in, v_out, a_out = span(clip, "0:v:0"), span(out, "0:v:0"), span(out, "0:a:0")
    assert v_out[0] - a_out[0] == pytest.approx(v_in[0], abs=0.01)  # lip sync: the same video offset
    assert a_out[1] - a_out[0] == pytest.approx(1.2, abs=0.05)


def test_clip_without_audio_from_start_with_sar(model_file, tmp_path):
    clip = need_clip("keep_real_3.mp4")                         # no audio, SAR 391:390, a face throughout
    out = tmp_path / "k3.mkv"
    s = summary_of(run(clip, "-o", out, "-m", model_file, "--start", "5.3", "--json", "--smooth", "1"))
    got, src = vid.probe(out), vid.probe(clip)
    assert got.frames == s["frames"] == src.frames_between(5.3, None) > 8
    assert s["faces"] >= s["frames"] - 1 and got.audio == [] and got.sar == src.sar


def test_rotation_metadata_is_applied_to_the_pixels(model_file, tmp_path):
    clip = synthetic(tmp_path / "s.mp4", n=10)
    rotated = tmp_path / "rot.mp4"
    ffmpeg("-display_rotation", "90", "-i", clip, "-c", "copy", rotated)
    assert vid.probe(rotated).rotation == 90
    out = tmp_path / "out.mp4"
    summary_of(run(rotated, "-o", out, "-m", model_file, "--json"))
    got = vid.probe(out)
    assert (got.width, got.height, got.rotation, got.frames) == (120, 160, 0.0, 10)


def test_audio_reencoded_when_the_container_refuses_it(model_file, tmp_path):
    clip = synthetic(tmp_path / "m.mkv", n=25, audio=sine_wav(tmp_path / "a.wav", 1.0), audio_codec="pcm_mulaw")
    out = tmp_path / "m.mp4"
    res = run(clip, "-o", out, "-m", model_file)
    assert res.exit_code == 0, res.output
    assert "audio re-encoded to aac" in res.output
    assert vid.probe(out).audio == ["aac"]
    a = span(out, "0:a:0")
    assert a[1] - a[0] == pytest.approx(1.0, abs=0.05)


def test_variable_frame_rate_is_said_and_stays_in_sync(model_file, tmp_path):
    clip = synthetic(tmp_path / "c.mp4", n=50, audio=sine_wav(tmp_path / "a.wav", 3.0))
    vfr = tmp_path / "vfr.mkv"                  # frames 25..49 shown twice as long: 1 s at 25 fps, 2 s at 12.5
    ffmpeg("-i", clip, "-vf", "setpts='if(lt(N,25),N/25,1+(N-25)/12.5)/TB'", "-fps_mode", "vfr",
           "-c:v", "libx264", "-crf", "10", "-c:a", "copy", vfr)
    assert vid.probe(vfr).vfr
    out = tmp_path / "out.mkv"
    res = run(vfr, "-o", out, "-m", model_file)
    assert res.exit_code == 0, res.output
    assert "variable frame rate" in res.output
    got = vid.probe(out)
    v = span(out, "0:v:0")
    assert not got.vfr and v[1] - v[0] == pytest.approx(3.0, abs=0.1)


# ---------------------------------------------------------------- damage
def test_unreadable_and_truncated_inputs(model_file, tmp_path):
    clip = synthetic(tmp_path / "c.mp4", n=50)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"                  # moov at the end: nothing can be read
    cut.write_bytes(data[:len(data) // 2])
    res = run(cut, "-m", model_file)
    assert res.exit_code == 1
    assert len(res.output.strip().splitlines()) == 1 and "cut.mp4" in res.output and "moov" in res.output
    assert not (tmp_path / "cut_restored.mp4").exists() and not list(tmp_path.glob("*.partial"))

    fast = tmp_path / "fast.mp4"
    ffmpeg("-i", clip, "-c", "copy", "-movflags", "+faststart", fast)
    data = fast.read_bytes()
    part = tmp_path / "part.mp4"                # index first, data cut: the start decodes
    part.write_bytes(data[:int(len(data) * 0.6)])
    res = run(part, "-m", model_file)
    assert res.exit_code == 1
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "part.mp4" in errors[0] and "truncated" in errors[0]
    kept = vid.probe(tmp_path / "part_restored.mp4")
    assert 10 < kept.frames < 50


# ---------------------------------------------------------------- resume
def test_resume_after_kill(model_file, tmp_path):
    clip = need_clip("keep_real_3.mp4")
    out = tmp_path / "r.mp4"
    args = [str(clip), "-o", str(out), "-m", str(model_file), "--duration", "1", "--chunk-frames", "3", "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "panini_cli", "video", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = tmp_path / "r.mp4.partial"
    deadline = time.time() + 60
    while len(list(partial.glob("chunk_*.json"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    finished = len(list(partial.glob("chunk_*.json")))
    assert finished >= 2 and not out.exists()
    first = (partial / "chunk_000000.mp4").read_bytes()
    s = summary_of(run(*args[:-1], "--json"))
    assert s["resumed_chunks"] >= finished - 1 >= 1          # a chunk may finish between the glob and the kill
    assert s["frames"] == vid.probe(out).frames == 20 and s["faces"] == 20
    assert not partial.exists() and len(first) > 0


def test_tracking_state_resumes_smoothing_exactly():
    """Stopping at a chunk boundary and going on from the saved state gives the same crops'
    landmarks as an uninterrupted run; smoothing removes jitter without lag on a steady move."""
    from panini_cli.faces import Face
    from panini_cli.tracking import END, FramePreparer

    rng = np.random.default_rng(0)
    truth = [np.array([[30, 40], [60, 40], [45, 55], [35, 68], [55, 68]], float) + [i * 0.5, 0] for i in range(40)]
    noisy = [t + rng.normal(0, 1.0, t.shape) for t in truth]

    class Stub:                                  # one face, landmarks given per frame
        def __init__(self):
            self.tracks = []

        def step(self, i, frame):
            self.tracks = [type("T", (), {"id": 7})()]
            lm = noisy[i]
            return [(7, Face((lm[:, 0].min() - 10, lm[:, 1].min() - 15, lm[:, 0].max() + 10, lm[:, 1].max() + 10),
                             1.0, lm))]

        def state(self):
            return {"n": 1}

        def load(self, state):
            assert state == {"n": 1}

    frames = [(i, np.zeros((120, 120, 3), np.uint8)) for i in range(40)]

    def landmarks(prep, upto):
        got = []
        while True:
            item = prep(None, None)
            if str(item.rel) == END or int(str(item.rel)) >= upto:
                return got, item
            got.append(prep.smoothed(7, int(str(item.rel))) if prep.k else None)

    whole = FramePreparer(iter(frames), Stub(), 32, 2.0, Path("x"), boundary_every=20)
    all_lm, _ = landmarks(whole, 99)
    first = FramePreparer(iter(frames), Stub(), 32, 2.0, Path("x"), boundary_every=20)
    part1, _ = landmarks(first, 19)
    state = json.loads(json.dumps(first.snapshots[20]))
    second = FramePreparer(iter(frames[20:]), Stub(), 32, 2.0, Path("x"), state=state)
    part2, _ = landmarks(second, 99)
    assert len(all_lm) == 40 and len(part2) == 20
    np.testing.assert_allclose(np.array(part2), np.array(all_lm[20:]))
    err_raw = np.mean([np.abs(n - t).mean() for n, t in zip(noisy[5:35], truth[5:35])])
    err_smooth = np.mean([np.abs(s - t).mean() for s, t in zip(all_lm[5:35], truth[5:35])])
    assert err_smooth < 0.6 * err_raw
    bias = np.mean([(s - t)[:, 0].mean() for s, t in zip(all_lm[5:35], truth[5:35])])
    assert abs(bias) < 0.2                       # centred window: no lag behind the motion


# ---------------------------------------------------------------- worker processes (--gpus on CPU)
WORKER_ARGS = ["--duration", "1", "--chunk-frames", "4", "-q"]       # 20 frames, 5 chunks, a face in each


def cli(*args, **kw) -> subprocess.Popen:
    """`panini video` in its own process (worker processes are spawned from it), in its own group."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "panini_cli", "video", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def json_of(proc) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one_process(model_file, tmp_path_factory):
    """The single-process run the worker runs must match, frame for frame."""
    clip = need_clip("keep_real_3.mp4")
    out = tmp_path_factory.mktemp("one") / "one.mp4"
    s = summary_of(run(clip, "-o", out, "-m", model_file, *WORKER_ARGS, "--json"))
    assert s["frames"] == 20 and s["faces"] == 20
    return clip, yuv_frames(out)


def test_two_cpu_workers_give_the_frames_of_one(model_file, one_process, tmp_path):
    clip, frames = one_process
    out = tmp_path / "two.mp4"
    s = json_of(cli(clip, "-o", out, "-m", model_file, *WORKER_ARGS, "--cpu-workers", "2", "--json"))
    assert s["frames"] == 20 and s["faces"] == 20 and s["resumed_chunks"] == 0
    np.testing.assert_array_equal(yuv_frames(out), frames)
    assert not (tmp_path / "two.mp4.partial").exists()


def test_workers_resume_keeps_chunks_finished_after_a_gap(model_file, one_process, tmp_path):
    clip, frames = one_process
    out = tmp_path / "r.mp4"
    args = [clip, "-o", out, "-m", model_file, *WORKER_ARGS, "--cpu-workers", "2", "--json"]
    proc = cli(*args)
    partial = tmp_path / "r.mp4.partial"
    deadline = time.time() + 300
    while len(list(partial.glob("chunk_*.json"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)              # the main process and its workers, as a killed job
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not out.exists()
    for p in partial.glob("chunk_000000*"):          # a gap: the chunks after it must still be skipped
        p.unlink()
    kept = len(list(partial.glob("chunk_*.json")))
    assert kept >= 1
    s = json_of(cli(*args))
    assert s["resumed_chunks"] == kept and s["frames"] == 20 and s["faces"] == 20
    np.testing.assert_array_equal(yuv_frames(out), frames)
    assert not partial.exists()


def test_gpus_without_cuda_fails_like_restore(model_file, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    clip = synthetic(tmp_path / "c.mp4", n=5)
    res = run(clip, "-m", model_file, "--gpus", "0,1")
    assert res.exit_code == 1 and "no CUDA device" in res.output
    assert not list(tmp_path.glob("*_restored*"))


# ---------------------------------------------------------------- --smooth-vdr
class OneFace:
    """A stub tracker: one face (track 3) at fixed landmarks in every frame."""
    tracks: list = []
    LM = np.array([[40, 50], [80, 50], [60, 70], [45, 88], [75, 88]], float)

    def step(self, i, frame):
        from panini_cli.faces import Face
        self.tracks = [type("T", (), {"id": 3})()]
        return [(3, Face((25.0, 25.0, 95.0, 105.0), 1.0, self.LM.copy()))]

    def state(self):
        return {}

    def load(self, state):
        pass


def test_vdr_smoothing_steadies_the_track_and_resumes_exactly():
    """The EMA along the track moves less from frame to frame than the DRE's own vDR, starts at
    it, and going on from the state saved at a chunk boundary gives the same vDRs bit for bit."""
    import torch

    from panini_cli.tracking import END, FramePreparer
    from panini_cli.vdr_smoothing import VdrSmoother
    from panini_models.panini import PRESETS, PaniniNet

    torch.manual_seed(0)
    dre = PaniniNet(PRESETS["small"]).dre
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (120, 120, 3))
    frames = [(i, np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)) for i in range(30)]

    def items(prep):
        got = []
        while (item := prep(None, None)).rel != Path(END):
            got.append(item)
        return got

    whole = items(FramePreparer(iter(frames), OneFace(), 64, 1.0, Path("x"), 10, vdr=VdrSmoother(dre, 3.0)))
    assert len(whole) == 30 and all(it.faces[0].vdr is not None for it in whole)
    smooth = np.array([it.faces[0].vdr for it in whole])
    raw = np.concatenate([VdrSmoother(dre, 3.0).raw([it.faces[0].crop]) for it in whole])
    np.testing.assert_allclose(smooth[0], raw[0], rtol=1e-6)
    step = lambda v: np.linalg.norm(np.diff(v, axis=0), axis=1).mean()       # noqa: E731
    assert step(smooth) < 0.5 * step(raw), (step(smooth), step(raw))

    first = FramePreparer(iter(frames), OneFace(), 64, 1.0, Path("x"), 10, vdr=VdrSmoother(dre, 3.0))
    for _ in range(20):
        first(None, None)
    state = json.loads(json.dumps(first.snapshots[20]))
    assert set(state["vdr"]) == {"3"}
    second = items(FramePreparer(iter(frames[20:]), OneFace(), 64, 1.0, Path("x"), state=state,
                                 vdr=VdrSmoother(dre, 3.0)))
    assert np.array_equal(np.array([it.faces[0].vdr for it in second]), smooth[20:])


VDR_ARGS = [*WORKER_ARGS, "--smooth-vdr", "3"]


def recorded_run(monkeypatch, *args, stop_after: int | None = None):
    """Run `panini video` in this process; returns (result, the vDRs and thetas the model used, in order).
    stop_after=N: interrupt (as Ctrl-C) at face N+1, once the first two chunks are on disk."""
    from panini_models.restorer import Restorer
    used, call = [], Restorer.__call__

    def hooked(self, crops, **kw):
        if stop_after is not None and len(used) == stop_after:
            out = Path(args[args.index("-o") + 1])
            deadline = time.time() + 120
            while not (out.parent / (out.name + ".partial") / "chunk_000001.json").exists():
                assert time.time() < deadline
                time.sleep(0.05)
            raise KeyboardInterrupt
        res = call(self, crops, **kw)
        used.extend((r.vdr, r.thetas) for r in res)
        return res

    with monkeypatch.context() as m:
        m.setattr(Restorer, "__call__", hooked)
        res = run(*args)
    return res, np.array([v for v, _ in used]), np.array([t for _, t in used])


@pytest.fixture(scope="module")
def vdr_smoothed(model_file, tmp_path_factory):
    clip = need_clip("keep_real_3.mp4")
    out = tmp_path_factory.mktemp("vdr") / "vdr.mp4"
    mp = pytest.MonkeyPatch()
    try:
        res, vdrs, thetas = recorded_run(mp, clip, "-o", out, "-m", model_file, *VDR_ARGS, "--json")
    finally:
        mp.undo()
    s = summary_of(res)
    assert s["frames"] == 20 and s["faces"] == 20 and len(vdrs) == 20
    return clip, yuv_frames(out), vdrs, thetas


def test_smooth_vdr_steadies_the_vdr_and_masks_of_a_real_track(model_file, vdr_smoothed, tmp_path, monkeypatch):
    clip, frames, vdrs, thetas = vdr_smoothed
    res, raw, raw_thetas = recorded_run(monkeypatch, clip, "-o", tmp_path / "raw.mp4", "-m", model_file,
                                        *WORKER_ARGS, "--json")
    assert summary_of(res)["faces"] == 20 and len(raw) == 20
    step = lambda v: np.abs(np.diff(v, axis=0)).mean()       # noqa: E731 - one face per frame: its track
    np.testing.assert_allclose(vdrs[0], raw[0], rtol=1e-4, atol=1e-5)     # the average starts at the DRE's
    assert step(vdrs) < 0.6 * step(raw), (step(vdrs), step(raw))
    assert step(thetas) < 0.6 * step(raw_thetas), (step(thetas), step(raw_thetas))
    assert not np.array_equal(yuv_frames(tmp_path / "raw.mp4"), frames)


def test_smooth_vdr_resumes_and_runs_in_workers_with_the_same_frames(model_file, vdr_smoothed, tmp_path,
                                                                     monkeypatch):
    clip, frames, vdrs, _ = vdr_smoothed
    out = tmp_path / "r.mp4"
    args = [clip, "-o", out, "-m", model_file, *VDR_ARGS, "--json"]
    res, _, _ = recorded_run(monkeypatch, *args, stop_after=12)
    assert res.exit_code == 130 and not out.exists()
    assert len(list((tmp_path / "r.mp4.partial").glob("chunk_*.json"))) >= 2
    res, resumed, _ = recorded_run(monkeypatch, *args)
    s = summary_of(res)
    assert s["resumed_chunks"] >= 2 and s["frames"] == 20
    np.testing.assert_array_equal(resumed, vdrs[-len(resumed):])
    np.testing.assert_array_equal(yuv_frames(out), frames)

    two = tmp_path / "two.mp4"
    s = json_of(cli(clip, "-o", two, "-m", model_file, *VDR_ARGS, "--cpu-workers", "2", "--json"))
    assert s["frames"] == 20 and s["faces"] == 20
    np.testing.assert_array_equal(yuv_frames(two), frames)
