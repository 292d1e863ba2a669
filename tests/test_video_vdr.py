"""`panini video --smooth-vdr`: the vDR averaged along each face track, steadier than the DRE's
own, resumed bit for bit from a chunk boundary and the same in worker processes.
"""
import json
import time
from pathlib import Path

import numpy as np
import pytest

from panini_cli.commands import video as video_command
from videoclips import WORKER_ARGS, cli, json_of, need_clip, run, summary_of, yuv_frames


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

    from panini_cli.video.tracking import END, FramePreparer
    from panini_cli.video.vdr_smoothing import VdrSmoother
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


VDR_ARGS = [*WORKER_ARGS, "--smooth-vdr", "3", "--force"]        # --force: random weights, past the check


def recorded_run(monkeypatch, *args, stop_after: int | None = None):
    """Run `panini video` in this process; returns (result, the vDRs and thetas the model used, in order).
    stop_after=N: interrupt (as Ctrl-C) at face N+1, once the first two chunks are on disk.
    One model stream, so the calls come in frame order."""
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
        m.setattr(video_command, "cpu_streams", lambda in_size, cores: (1, 1))   # calls in frame order
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
                                        *WORKER_ARGS, "--json", "--force")   # random weights: past the check
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
