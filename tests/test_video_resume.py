"""`panini video` interrupted and rerun: finished chunks kept, tracking state resumed exactly,
and the chunks spread over worker processes (--cpu-workers; --gpus on CPU) giving the same frames.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from panini_cli import video as vid
from videoclips import REPO, WORKER_ARGS, cli, json_of, need_clip, run, summary_of, synthetic, yuv_frames


# ---------------------------------------------------------------- resume
def test_resume_after_kill(model_file, tmp_path):
    clip = need_clip("keep_real_3.mp4")
    out = tmp_path / "r.mp4"
    # HOG: its face count on this clip is known (20, one a frame); the CNN also finds a
    # partly hidden face in the background in some frames. This test is about resuming.
    args = [str(clip), "-o", str(out), "-m", str(model_file), "--duration", "1", "--chunk-frames", "3",
            "--detector", "hog", "-q"]
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
    from panini_cli.video.tracking import END, FramePreparer

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
