"""What the GPU training run of issue 15 (scripts/device_train.sh) relies on, checked on the CPU:
the base128 preset, the degradation mixture and its photo order, the wall-clock budget with
periodic float16 exports that a killed run still leaves loadable, the packed training set
(landmarks found here, crops cut there) equal to scripts/align_faces.py, and the script's config."""
import json
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from panini_models.checkpoints import read_weights
from panini_models.degradations import DegradationParams, DegradationRanges, degrade, jpeg_roundtrip
from panini_models.panini import PRESETS, PaniniNet
from panini_models.registry import load_model
from panini_models.tensors import bgr_to_tensor
from panini_models.training.api import start
from panini_models.training.data import FaceDataset, degrade_photo, parse_mix
from panini_models.training.runner import LATEST
from panini_models.training.state import CHECKPOINT, load_checkpoint, load_config

from conftest import DATA, REPO, need
from trainhelpers import _keep_thread_settings  # noqa: F401 - autouse: one torch thread in these tests
from trainhelpers import TINY, _run_cli, faces, restore_cfg, train_records

SCRIPT = REPO / "scripts" / "device_train.sh"


# ---------------------------------------------------------------- the preset
def test_base128_preset_fits_the_limits_and_takes_the_default_models_dre():
    cfg = PRESETS["base128"]
    assert (cfg.in_size, cfg.out_size) == (128, 256)
    torch.manual_seed(0)
    model = PaniniNet(cfg).eval()
    n = sum(p.numel() for p in model.parameters())
    assert n < 8e6 and 2 * n < 16 * 2 ** 20, n                 # float16 file under the device's 16 MiB
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 128, 128).uniform_(-1, 1), return_aux=True)
    assert out.image.shape == (1, 3, 256, 256) and out.vdr.shape == (1, cfg.dr_dim)
    default = REPO / "models" / "weights" / "default.safetensors"
    if default.exists():                                        # the DRE device_train.sh reuses
        state = read_weights(default)[2]
        model.dre.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("dre.")})


# ---------------------------------------------------------------- degradations
def _face(size=256, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (24, 24, 3)).astype(np.uint8), (size, size),
                     interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def test_photo_order_degrades_at_the_photos_size_then_cuts_as_restore_does():
    gt = _face()
    rng = lambda: np.random.default_rng(1)   # noqa: E731
    # r = 4 (1024-px units) keeps the 256 px face whole: JPEG'd at 256 px, then area-reduced as the crop is
    clean = degrade_photo(gt, DegradationParams(0, 4, 0, 95), 128, rng())
    area = cv2.resize(gt, (128, 128), interpolation=cv2.INTER_AREA)
    assert np.array_equal(clean, cv2.resize(jpeg_roundtrip(gt, 95)[0], (128, 128), interpolation=cv2.INTER_AREA))
    # r = 16: a 64 px face, JPEG'd at 64 px, enlarged by bicubic as the crop of a small face is
    small = degrade_photo(gt, DegradationParams(0, 16, 0, 80), 128, rng())
    mid = cv2.imdecode(cv2.imencode(".jpg", cv2.resize(gt, (64, 64), interpolation=cv2.INTER_AREA),
                                    [cv2.IMWRITE_JPEG_QUALITY, 80])[1], cv2.IMREAD_COLOR)
    assert np.array_equal(small, cv2.resize(mid, (128, 128), interpolation=cv2.INTER_CUBIC))
    # compression of a full-size photo, then reduced by the crop, is milder than Eq. 10's JPEG on the
    # model's grid: the reason the photo order exists (the benchmark's `mild` case)
    p = DegradationParams(0, 4, 0, 30)
    photo = degrade_photo(gt, p, 128, rng()).astype(int)
    eq10 = degrade(gt, p, out_size=128, rng=rng()).astype(int)
    assert np.abs(photo - area).mean() < 0.75 * np.abs(eq10 - area).mean()
    # noise is added at the photo's size: 64 px noise enlarged to 128 px is spatially correlated
    noisy = degrade_photo(np.full((256, 256, 3), 128, np.uint8), DegradationParams(0, 16, 20, 100), 128, rng())
    d = noisy.astype(float) - noisy.mean()
    assert (d[:, 1:] * d[:, :-1]).mean() / d.var() > 0.5


def test_a_degradation_mix_draws_parts_by_weight_reproducibly(tmp_path):
    files = sorted(faces(tmp_path / "hq", 4, size=256).glob("*.png"))
    mix = parse_mix([{"name": "jpeg", "weight": 1, "order": "photo", "sigma": [0, 0], "r": [4, 4],
                      "noise": [0, 0], "jpeg": [30, 31]},
                     {"weight": 3, "order": "eq10", "r": [40, 60]}], {"noise": [1, 2]})
    assert mix[1].ranges.noise == (1.0, 2.0) and mix[1].ranges.sigma == DegradationRanges().sigma
    data = FaceDataset(files, 256, 128, "eq10", seed=5, mix=mix)
    parts = np.array([data.part(e, i) for e in range(100) for i in range(4)])
    assert 0.18 < (parts == 0).mean() < 0.32
    for key in [(e, i) for e in range(6) for i in range(4)]:
        a, b = data[key], data[key]
        assert torch.equal(a["lq"], b["lq"]) and a["lq"].shape == (3, 128, 128)
        sigma, r, noise, q = a["params"].tolist()
        if data.part(*key) == 0:
            assert (sigma, r, noise) == (0, 4, 0) and q in (30, 31)
        else:
            assert 40 <= r <= 60 and 1 <= noise <= 2
    fixed = DegradationRanges(sigma=(1, 1), r=(16, 16), noise=(5, 5), jpeg=(70, 70))
    whole = FaceDataset(files, 256, 128, "photo", fixed, seed=5, flip=False)      # lq=photo without a mix
    rng = np.random.default_rng(np.random.SeedSequence([5, 0, 2, 0]))     # sample (0, 2)'s stream
    assert fixed.sample(rng) == DegradationParams(1, 16, 5, 70)
    ref = degrade_photo(cv2.imread(str(files[2])), DegradationParams(1, 16, 5, 70), 128, rng)
    assert torch.equal(whole[(0, 2)]["lq"], bgr_to_tensor(ref)[0])
    plain = FaceDataset(files, 256, 128, "eq10", seed=5)            # no mix: samples as before
    assert torch.equal(plain[(0, 1)]["lq"], FaceDataset(files, 256, 128, seed=5)[(0, 1)]["lq"])
    with pytest.raises(ValueError, match="order"):
        parse_mix([{"order": "bicubic"}])
    with pytest.raises(ValueError, match="unknown keys"):
        parse_mix([{"order": "photo", "blur": [0, 1]}])
    with pytest.raises(ValueError, match="eq10 or photo"):
        FaceDataset(files, 256, 128, "bilinear", mix=mix)


# ---------------------------------------------------------------- wall-clock budget and exports
def test_a_spent_budget_ends_the_run_with_its_exports(tmp_path):
    data = faces(tmp_path / "hq", 6)
    out, exports = tmp_path / "run", tmp_path / "out"
    sets = sum((["--set", s] for s in TINY), [])
    res = _run_cli(["train", "restore", data, "--out", out, "--steps", 1000, "-b", 1, *sets,
                    "--set", "max_seconds=0.01", "--set", "export_every_s=60", "--set", f"export_dir={exports}"])
    assert res.exit_code == 0, res.output
    assert "time budget of 0 s spent at step 1" in res.output
    assert load_checkpoint(out / CHECKPOINT)["step"] == 1
    kind, _, state, meta = read_weights(exports / "final.safetensors")
    assert kind == "panini" and meta["stored_dtype"].startswith("float16")
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert not (exports / LATEST).exists()
    full = read_weights(out / "final.safetensors")[2]                 # the float32 export beside it
    assert all(torch.equal(state[k], v.half()) for k, v in full.items() if v.is_floating_point())
    assert load_model(str(exports / "final.safetensors")).config.channel_max == 16


def test_the_schedule_is_fitted_to_the_budget_and_exports_come_every_interval(tmp_path):
    data = faces(tmp_path / "hq", 6)
    r = start(restore_cfg("total_steps=100000", "batch_size=1", "max_seconds=4", "export_every_s=1",
                          f"export_dir={tmp_path / 'out'}", "lr_g=1e-3", "lr_min=0"), data, tmp_path / "run")
    assert r["status"] == "done" and 10 < r["step"] < 100000
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    fits = [x for x in recs if x["kind"] == "schedule"]
    assert len(fits) >= 3 and all(abs(x["total_steps"] - r["step"]) < 0.5 * r["step"] for x in fits[1:])
    periodic = [x for x in recs if x["kind"] == "export" and x["file"].endswith(LATEST)]
    assert len(periodic) >= 2
    lr = [x["lr"] for x in recs if x["kind"] == "train"]
    assert lr[0] == pytest.approx(1e-3, rel=1e-3) and lr[-1] < 0.2 * 1e-3       # the cosine ran (most of) its course
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["trainer"]["sched"]["total"] == fits[-1]["total_steps"]
    assert (tmp_path / "out" / "final.safetensors").exists() and not (tmp_path / "out" / LATEST).exists()


def test_a_run_killed_outright_leaves_loadable_weights_no_older_than_the_interval(tmp_path):
    data = faces(tmp_path / "hq", 6)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "panini_cli", "train", "restore", str(data), "--out", str(tmp_path / "run")]
    for s in TINY + ["total_steps=100000", "batch_size=1", "max_seconds=600", "export_every_s=0.5",
                     f"export_dir={out}"]:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    log = tmp_path / "run" / "log.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count(LATEST) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)                   # what a device call cut at its limit does
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL, output
    model = load_model(str(out / LATEST))
    kind, _, state, meta = read_weights(out / LATEST)
    assert int(meta["trained_steps"]) >= 1 and all(v.dtype != torch.float32 for v in state.values())
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 3, 64, 64))).all()


# ---------------------------------------------------------------- the packed training set
def test_pack_and_cut_give_the_crops_align_faces_gives(tmp_path):
    pytest.importorskip("dlib", reason="pack_trainset.py needs dlib (here, not on the device)")
    src = need(DATA / "trainset" / "utkface")
    chips = sorted(src.glob("*.jpg"))[:4]
    folder = tmp_path / "chips"
    folder.mkdir()
    for c in chips:
        (folder / c.name).symlink_to(c)
    held = tmp_path / "held.txt"
    held.write_text(f"{chips[0].name}\n{chips[1].name}\n")             # chips[1] is the validation face
    npz = tmp_path / "pack.npz"
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], capture_output=True, text=True,  # noqa: E731
                                    cwd=REPO, timeout=120)
    res = run("scripts/pack_trainset.py", "pack", folder, npz, "--heldout", held, "--val", "1:2", "--workers", 1)
    assert res.returncode == 0, res.stderr
    with np.load(npz, allow_pickle=False) as z:
        names, split = list(z["names"]), z["split"].tolist()
    assert chips[0].name not in names and chips[1].name in names       # held out, except the validation face
    assert split[names.index(chips[1].name)] == 1 and sum(split) == 1
    res = run("scripts/pack_trainset.py", "cut", npz, tmp_path / "cut", "--size", 128, "--workers", 1)
    assert res.returncode == 0, res.stderr
    res = run("scripts/align_faces.py", folder, tmp_path / "ref", "--size", 128, "--workers", 1)
    assert res.returncode == 0, res.stderr
    cut = {p.name: p for p in (tmp_path / "cut").rglob("*.png")}
    assert len(cut) == len(names) >= 2
    for name, p in cut.items():
        assert np.array_equal(cv2.imread(str(p)), cv2.imread(str(tmp_path / "ref" / name))), name


# ---------------------------------------------------------------- the device script
def test_the_device_scripts_training_config_is_valid(tmp_path):
    text = SCRIPT.read_text()
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    body = re.search(r'cat > "\$WORK/train_config.json" <<\'EOF\'\n(.*?)\nEOF', text, re.S).group(1)
    (tmp_path / "c.json").write_text(body)
    cfg = load_config("restore", tmp_path / "c.json", ["task=base128"])     # as the script's --config
    mix = parse_mix(cfg.degradation_mix, cfg.degradation)
    assert sum(p.weight for p in mix) == pytest.approx(1.0)
    orders = {p.name: p.order for p in mix}
    assert orders["jpeg_only"] == orders["down_only"] == "photo" and "eq10" in orders.values()
    jpeg_only = next(p for p in mix if p.name == "jpeg_only").ranges
    assert jpeg_only.sigma == (0, 0) and jpeg_only.noise == (0, 0) and jpeg_only.r[1] <= 4.5
    assert cfg.gan_weight > 0 and cfg.feature_match_weight > 0 and cfg.l1_weight == 1.0
