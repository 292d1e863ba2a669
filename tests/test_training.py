"""Training: UDRL learns degradations, restore fine-tuning learns, and the run machinery
(resume after SIGTERM, 2 ranks = 1 rank with the doubled batch, NaN stop, atomic
checkpoints) holds. Everything runs on the CPU with tiny models and tiny images."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from panini_cli.app import app
from panini_models.checkpoints import build, read_weights
from panini_models.registry import load_model
from panini_models.stylegan2 import StyleGAN2Discriminator
from panini_models.training import metrics
from panini_models.training.api import start
from panini_models.training.data import FaceDataset, ResumableBatches, list_images, split_holdout
from panini_models.training.dist import DistInfo
from panini_models.training.losses import (PerceptualLoss, VGG16Features, discriminator_features, load_vgg16)
from panini_models.training.loop import LOSS_NAMES, PerSampleBatchNorm2d, RestoreTrainer
from panini_models.training.state import (CHECKPOINT, load_checkpoint, load_config,
                                          remove_stale_temp, save_checkpoint)
from panini_models.training.udrl import UDRLTrainer, retrieval_accuracy

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# A Panini-Net small enough to train on a CPU in a test (64 -> 128 px, <= 16 channels).
TINY_MODEL = {"channel_base": 1024, "channel_max": 16, "style_dim": 32, "n_mlp": 1, "rrdb_channels": 4,
              "rrdb_growth": 4, "latent_hidden": 8, "dr_dim": 16, "dre_channels": [4, 4, 8, 8, 16, 16],
              "mask_hidden": 16}
TINY = [f"model={json.dumps(TINY_MODEL)}", "task=small", "num_workers=0", "threads=1", "log_every=1",
        "val_every=0", "val_count=0", "ckpt_every=1000", "tensorboard=false"]


@pytest.fixture(autouse=True)
def _keep_thread_settings():
    """One torch thread (the machine's 2 cores are shared; oversubscribed OpenMP crawls), and
    leave the thread counts of the test process as we found them."""
    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv_threads)


def faces(folder: Path, n: int, size: int = 128, seed: int = 0) -> Path:
    """Smooth random colour images: stand-ins for faces with structure at several scales."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
        fine = rng.integers(0, 256, (12, 12, 3)).astype(np.uint8)
        img = (0.75 * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
               + 0.25 * cv2.resize(fine, (size, size), interpolation=cv2.INTER_CUBIC))
        cv2.imwrite(str(folder / f"{i:03d}.png"), img.astype(np.uint8))
    return folder


def restore_cfg(*extra):
    return load_config("restore", None, TINY + list(extra))


def train_records(run_dir: Path) -> dict[int, dict]:
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: {k: r[k] for k in LOSS_NAMES} for r in recs if r["kind"] == "train"}


# ------------------------------------------------------------------ UDRL
def test_udrl_makes_same_degradation_pairs_closer(tmp_path):
    """A tiny DRE trained 100 MoCo steps on synthetic faces: held-out pairs of *different* faces
    with one degradation become closer than pairs with different degradations."""
    data = faces(tmp_path / "hq", 48, size=64)
    cfg = load_config("dre", None, [
        "preset=small", 'model={"dre_channels": [8, 8, 16, 16, 32, 32], "dr_dim": 32, "dre_input_size": 32}',
        "hq_size=64", "lq_size=32", "batch_size=16", "queue=64", "momentum=0.99", "num_workers=0",
        "val_count=24", "val_pairs=64", "total_steps=100"])
    train, val = split_holdout(list_images(data), cfg.val_count, cfg.seed)
    trainer = UDRLTrainer(cfg, train, val, DistInfo())
    xq, xk = trainer.val
    assert not set(train) & set(val)
    before = retrieval_accuracy(trainer.moco.encoder_q, xq, xk)
    losses = [trainer.train_step()["infonce"] for _ in range(cfg.total_steps)]
    after = retrieval_accuracy(trainer.moco.encoder_q, xq, xk)
    assert all(np.isfinite(losses))
    # pairwise: P(own key closer than another pair's key), chance 0.5 (untrained: ~0.4-0.55)
    assert after["pairwise_embed"] > 0.75 and after["pairwise_embed"] > before["pairwise_embed"] + 0.2, (before, after)
    assert after["pairwise_vdr"] > 0.7, after
    # top-1 retrieval of the own key among 8 keys, chance 1/8
    assert after["top1_embed"] >= 2 * after["top1_chance"], after
    # the export is a DRE file the restore trainer and checkpoints.build accept
    path = tmp_path / "dre.safetensors"
    trainer.export(path)
    kind, config, state, meta = read_weights(path)
    assert kind == "dre" and meta["trained_steps"] == "100"
    enc = build(kind, config, state).eval()
    torch.testing.assert_close(enc(xq[:4]), trainer.moco.encoder_q.eval()(xq[:4]))


def test_udrl_pairs_share_degradation_not_face(tmp_path):
    from panini_models.training.data import UDRLPairs
    files = list_images(faces(tmp_path / "hq", 6, size=32))
    pairs = UDRLPairs(files, 32, 16)
    a, b = pairs[(0, 2)], pairs[(1, 2)]
    assert a["index"] == 2 and a["partner"] != 2
    assert not torch.equal(a["params"], b["params"])            # new parameters every epoch
    again = pairs[(0, 2)]
    assert torch.equal(again["query"], a["query"]) and again["partner"] == a["partner"]


# ------------------------------------------------------------------ restore
def test_restore_loss_falls(tmp_path):
    """Two faces under one fixed degradation: the full G/D step (L1 + D feature matching + GAN)
    must drive the L1 error of the generator down."""
    data = faces(tmp_path / "hq", 2)
    cfg = restore_cfg("total_steps=20", "batch_size=1", "lr_g=3e-3", "lr_d=3e-3", "lr_min=3e-3", "flip=false",
                      'degradation={"sigma": [2, 2], "r": [16, 16], "noise": [0, 0], "jpeg": [60, 60]}')
    start(cfg, data, tmp_path / "run")
    l1 = [r["l1"] for r in train_records(tmp_path / "run").values()]
    assert np.mean(l1[-5:]) < 0.8 * np.mean(l1[:5]) and np.mean(l1[-5:]) < 0.7 * l1[0], l1


def test_frozen_dre_prior_and_discriminator_are_loaded(tmp_path):
    """--prior fills G's StyleGAN2 and D, --dre the frozen encoder; a step moves neither the DRE
    weights nor its BatchNorm statistics, while the StyleGAN2 does train."""
    data = faces(tmp_path / "hq", 6)
    pcfg = load_config("prior", None, ["size=128", "channel_base=1024", "channel_max=16", "style_dim=32",
                                       "n_mlp=1", "batch_size=2", "total_steps=2", "r1_every=2", "num_workers=0",
                                       "val_every=0", "val_count=0", "threads=1", "tensorboard=false"])
    res = start(pcfg, data, tmp_path / "prior")
    prior_file = Path(res["export"])
    dcfg = load_config("dre", None, ["preset=small", f"model={json.dumps(TINY_MODEL)}", "batch_size=2",
                                     "total_steps=1", "num_workers=0", "val_every=0", "val_count=0", "queue=8",
                                     "tensorboard=false"])
    dre_file = Path(start(dcfg, data, tmp_path / "dre")["export"])
    cfg = restore_cfg("batch_size=2", "total_steps=10")
    trainer = RestoreTrainer(cfg, list_images(data), [], DistInfo(), prior=prior_file, dre=dre_file)
    _, _, pstate, _ = read_weights(prior_file)
    for k, v in trainer.G.stylegan.state_dict().items():
        assert torch.equal(v, pstate[f"generator.{k}"]), k
    for k, v in trainer.D.state_dict().items():
        assert torch.equal(v, pstate[f"discriminator.{k}"]), k
    _, _, dstate, _ = read_weights(dre_file)
    dre_before = {k: v.clone() for k, v in trainer.G.dre.state_dict().items()}
    for k, v in dre_before.items():
        assert torch.equal(v, dstate[k]), k
    conv_before = trainer.G.stylegan.convs[0].conv.weight.detach().clone()
    for _ in range(2):
        trainer.train_step()
    assert all(not p.requires_grad for p in trainer.G.dre.parameters())
    for k, v in trainer.G.dre.state_dict().items():
        assert torch.equal(v, dre_before[k]), f"frozen DRE changed: {k}"
    assert not torch.equal(conv_before, trainer.G.stylegan.convs[0].conv.weight)


def _run_cli(args, **kw):
    res = runner.invoke(app, [str(a) for a in args], **kw)
    return res


def test_cli_restore_run_exports_a_model_restore_can_load(tmp_path):
    data = faces(tmp_path / "hq", 6)
    out = tmp_path / "run"
    sets = sum((["--set", s] for s in TINY if not s.startswith("val")), [])
    res = _run_cli(["train", "restore", data, "--out", out, "--steps", 2, "-b", 1, *sets,
                    "--set", "val_count=2", "--set", "val_every=2", "--set", "samples=2"])
    assert res.exit_code == 0, res.output
    assert "feature matching on the discriminator" in res.output            # said at start ...
    saved = json.loads((out / "config.json").read_text())
    assert any("feature matching" in n for n in saved["notes"])             # ... and in the run config
    assert saved["config"]["total_steps"] == 2 and len(saved["val_images"]) == 2
    assert (out / "samples" / "step_0000002.png").exists()
    val = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"val"' in x]
    assert {"psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "theta"} <= set(val[-1])
    model = load_model(str(out / "final.safetensors"))                    # what `restore -m FILE` does
    assert model.config.in_size == 64 and model.config.channel_max == 16
    ckpt = load_checkpoint(out / CHECKPOINT)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["trainer"]["ema"][k]), k
    # exporting the checkpoint again gives the same tensors; a second start without --resume is refused
    again = tmp_path / "again.safetensors"
    assert _run_cli(["train", "export", out, "--out", again]).exit_code == 0
    assert read_weights(again)[2].keys() == read_weights(out / "final.safetensors")[2].keys()
    res = _run_cli(["train", "restore", data, "--out", out, *sets])
    assert res.exit_code == 1 and "--resume" in res.output


def test_resume_after_sigterm_reproduces_the_uninterrupted_losses(tmp_path):
    data = faces(tmp_path / "hq", 8)
    args = ["total_steps=9", "batch_size=1", "num_workers=1"]
    start(restore_cfg(*args), data, tmp_path / "ref")
    ref = train_records(tmp_path / "ref")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "panini_cli", "train", "restore", str(data), "--out", str(run)]
    for s in TINY + args:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = run / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(train_records(run)) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output
    stopped_at = load_checkpoint(run / CHECKPOINT)["step"]
    assert 3 <= stopped_at < 9, output
    res = _run_cli(["train", "restore", data, "--out", run, "--resume"])
    assert res.exit_code == 0, res.output
    got = train_records(run)
    assert sorted(got) == list(range(1, 10))
    assert got == ref, (stopped_at, got, ref)
    a, b = read_weights(run / "final.safetensors")[2], read_weights(tmp_path / "ref" / "final.safetensors")[2]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stop_at_ends_a_stage_and_resume_runs_the_next_with_new_settings(tmp_path):
    data = faces(tmp_path / "hq", 6)
    run = tmp_path / "run"
    sets = sum((["--set", s] for s in TINY + ["total_steps=4", "batch_size=1", "num_workers=0"]), [])
    res = _run_cli(["train", "restore", data, "--out", run, *sets, "--set", "stop_at=2"])
    assert res.exit_code == 0 and "stop_at" in res.output, res.output
    assert load_checkpoint(run / CHECKPOINT)["step"] == 2 and not (run / "final.safetensors").exists()
    res = _run_cli(["train", "restore", data, "--out", run, "--resume"])          # still stage 1: no step
    assert res.exit_code == 0 and load_checkpoint(run / CHECKPOINT)["step"] == 2, res.output
    res = _run_cli(["train", "restore", data, "--out", run, "--resume", "--set", "stop_at=0",
                    "--set", "degradation.r=[10,40]"])
    assert res.exit_code == 0, res.output
    assert sorted(train_records(run)) == [1, 2, 3, 4] and (run / "final.safetensors").exists()
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["degradation"] == {"r": [10, 40]} and saved["stop_at"] == 0


def test_init_starts_from_a_whole_model_and_refuses_a_prior_beside_it(tmp_path):
    data = faces(tmp_path / "hq", 4)
    sets = sum((["--set", s] for s in TINY + ["total_steps=1", "batch_size=1"]), [])
    assert _run_cli(["train", "restore", data, "--out", tmp_path / "a", *sets]).exit_code == 0
    first = tmp_path / "a" / "final.safetensors"
    cfg = restore_cfg("total_steps=1", "batch_size=1")
    trainer = RestoreTrainer(cfg, list_images(data), [], DistInfo(), init=first)
    want = read_weights(first)[2]
    got = trainer.G.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if not k.endswith("num_batches_tracked"))
    assert not any("no --dre" in n or "no --prior" in n for n in trainer.notes)
    with pytest.raises(ValueError, match="drop --prior"):
        RestoreTrainer(cfg, list_images(data), [], DistInfo(), init=first, prior=first)
    res = _run_cli(["train", "restore", data, "--out", tmp_path / "b", *sets, "--init", first])
    assert res.exit_code == 0 and "initialised from final.safetensors" in res.output, res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: str, run: str, args: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    start(restore_cfg(*args), data, run)
    # UDRL across ranks: keys gathered into the queue, key batch shuffled across ranks for BN
    start(load_config("dre", None, ["preset=small", f"model={json.dumps(TINY_MODEL)}", "batch_size=2",
                                    "total_steps=2", "num_workers=0", "val_every=0", "val_count=0", "queue=16",
                                    "tensorboard=false", "threads=1"]), data, run + "_dre")
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_equal_one_rank_with_the_doubled_batch(tmp_path):
    data = faces(tmp_path / "hq", 8)
    common = ["total_steps=3", "d_mbstd_group=1", "lr_g=1e-3", "lr_d=1e-3"]
    start(restore_cfg(*common, "batch_size=2"), data, tmp_path / "one")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(data), str(tmp_path / "two"),
                                                   common + ["batch_size=1"]), nprocs=2, join=True)
    one, two = train_records(tmp_path / "one"), train_records(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        for k in LOSS_NAMES:
            assert two[step][k] == pytest.approx(one[step][k], rel=1e-4, abs=1e-5), (step, k)
    a = read_weights(tmp_path / "one" / "final.safetensors")[2]
    b = read_weights(tmp_path / "two" / "final.safetensors")[2]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=5e-5, msg=k)
    ga = load_checkpoint(tmp_path / "one" / CHECKPOINT)["trainer"]["G"]
    gb = load_checkpoint(tmp_path / "two" / CHECKPOINT)["trainer"]["G"]
    for k in ga:                                             # the trained (non-EMA) generators too
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-4, atol=5e-5, msg=k)
    init = RestoreTrainer(restore_cfg(*common, "batch_size=2"), list_images(data), [], DistInfo()).G.state_dict()
    moved = max(float((ga[k] - v).abs().max()) for k, v in init.items() if v.is_floating_point())
    assert moved > 1e-3   # the comparison is not between two untrained models
    moco = load_checkpoint(tmp_path / "two_dre" / CHECKPOINT)["trainer"]["moco"]
    assert int(moco["queue_ptr"]) == 2 * 2 * 2                  # steps x ranks x batch keys enqueued
    assert torch.allclose(moco["queue"][:, :8].norm(dim=0), torch.ones(8))


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    files = list_images(faces(tmp_path / "hq", 8))
    params = {}
    for name, extra in (("batch", ["batch_size=2"]), ("accum", ["batch_size=1", "accum=2"])):
        trainer = RestoreTrainer(restore_cfg("total_steps=3", "d_mbstd_group=1", "lr_g=1e-3", "lr_d=1e-3",
                                             *extra), files, [], DistInfo())
        init = {k: v.detach().clone() for k, v in trainer.G.named_parameters()}
        for _ in range(2):
            trainer.train_step()
        assert max(float((v.detach() - init[k]).abs().max()) for k, v in trainer.G.named_parameters()) > 1e-3
        params[name] = dict(trainer.G.named_parameters()) | {f"D.{k}": v for k, v in trainer.D.named_parameters()}
    for k, v in params["batch"].items():
        # Adam turns float-rounding differences of tiny gradients into up to ~1% of one lr step
        torch.testing.assert_close(params["accum"][k], v, rtol=1e-4, atol=5e-5, msg=k)


def test_paired_folder_mode_reads_lq_by_relative_path(tmp_path):
    hq = faces(tmp_path / "hq" / "a", 2).parent
    lq_root = tmp_path / "lq" / "a"
    lq_root.mkdir(parents=True)
    for p in sorted((hq / "a").glob("*.png")):
        img = cv2.resize(cv2.imread(str(p)), (32, 32), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(lq_root / f"{p.stem}.jpg"), img)
    files = list_images(hq)
    ds = FaceDataset(files, 128, 64, "pairs", flip=False, pairs_dir=tmp_path / "lq", root=hq)
    item = ds[(0, 1)]
    want = cv2.resize(cv2.imread(str(lq_root / "001.jpg")), (64, 64), interpolation=cv2.INTER_CUBIC)
    torch.testing.assert_close(item["lq"], torch.from_numpy(want[..., ::-1].copy()).permute(2, 0, 1) / 127.5 - 1)
    (lq_root / "000.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="no LQ image"):
        FaceDataset(files, 128, 64, "pairs", pairs_dir=tmp_path / "lq", root=hq)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    data = faces(tmp_path / "hq", 4)
    out = tmp_path / "run"
    sets = sum((["--set", s] for s in TINY), [])
    res = _run_cli(["train", "restore", data, "--out", out, "--steps", 20, "-b", 1, *sets, "--set",
                    "lr_g=1e12", "--set", "lr_d=1e12", "--set", "lr_min=1e12", "--set", "ckpt_every=1"])
    assert res.exit_code == 3, res.output
    text = " ".join(res.output.split())
    assert "non-finite loss at step" in text and "stopped without saving" in text, text
    step = int(text.split("non-finite loss at step ")[1].split(":")[0])
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert ckpt["step"] == step - 1 and f"(step {step - 1})" in text
    assert all(torch.isfinite(v).all() for v in ckpt["trainer"]["G"].values() if v.is_floating_point())
    assert not (out / "final.safetensors").exists()


WRITE_AND_DIE = """
import os, signal, sys, threading, time
from pathlib import Path
import torch
from panini_models.training.state import save_checkpoint
path, old_len = Path(sys.argv[1]), int(sys.argv[2])
tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
def killer():  # SIGKILL ourselves once the new file is well past the old one's size
    while not (tmp.exists() and tmp.stat().st_size > 4 * old_len + (8 << 20)):
        time.sleep(0.0005)
    os.kill(os.getpid(), signal.SIGKILL)
threading.Thread(target=killer, daemon=True).start()
save_checkpoint(path, {"step": 2, "big": torch.ones(64 << 20)})   # 256 MB
"""


def test_checkpoint_killed_mid_write_keeps_the_last_good_one(tmp_path):
    path = tmp_path / CHECKPOINT
    good = {"step": 1, "w": torch.arange(10.0)}
    save_checkpoint(path, good)
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-c", WRITE_AND_DIE, str(path), str(len(before))], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    partial = list(tmp_path.glob(f".{CHECKPOINT}.tmp-*"))
    assert len(partial) == 1 and 8 << 20 < partial[0].stat().st_size < 256 << 20   # killed mid-write
    assert path.read_bytes() == before and torch.equal(load_checkpoint(path)["w"], good["w"])
    assert remove_stale_temp(tmp_path) == partial and not partial[0].exists()
    # a failure inside torch.save (unpicklable state) also leaves the old file and no temp
    with pytest.raises(Exception):
        save_checkpoint(path, {"step": 3, "bad": lambda: 0})
    assert path.read_bytes() == before and not list(tmp_path.glob(".*tmp*"))


# ------------------------------------------------------------------ pieces
def test_batches_split_over_ranks_like_one_doubled_batch():
    one = iter(ResumableBatches(10, 4, seed=3))
    ranks = [iter(ResumableBatches(10, 2, r, 2, seed=3)) for r in range(2)]
    for _ in range(6):                                   # crosses epochs (2 batches per epoch)
        assert sorted(next(one)) == sorted(next(ranks[0]) + next(ranks[1]))
    resumed = iter(ResumableBatches(10, 4, seed=3, start=4))
    fresh = iter(ResumableBatches(10, 4, seed=3))
    assert [next(fresh) for _ in range(6)][4:] == [next(resumed) for _ in range(2)]


def test_dataset_is_seeded_per_epoch_and_index(tmp_path):
    files = list_images(faces(tmp_path / "hq", 3))
    ds = FaceDataset(files, 128, 64, seed=5)
    a, b = ds[(0, 1)], ds[(0, 1)]
    assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"])
    assert a["lq"].shape == (3, 64, 64) and a["gt"].shape == (3, 128, 128)
    assert not torch.equal(ds[(1, 1)]["lq"], a["lq"])
    flips = {bool(torch.equal(ds[(e, 0)]["gt"], ds.__class__(files, 128, 64, flip=False)[(e, 0)]["gt"]))
             for e in range(8)}
    assert flips == {True, False}                        # some epochs flipped, some not


def test_discriminator_features_match_its_forward():
    torch.manual_seed(0)
    d = StyleGAN2Discriminator(64, channel_base=512, channel_max=16)
    x = torch.randn(4, 3, 64, 64)
    feats, logits = discriminator_features(d, x)
    torch.testing.assert_close(logits, d(x), rtol=0, atol=0)
    assert len(feats) == len(d.blocks) + 2


def test_per_sample_batchnorm_is_batchnorm_at_batch_one():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(1).train()
    ps = PerSampleBatchNorm2d.replace(bn).train()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(ps(x[:1]), bn(x[:1]))
    torch.testing.assert_close(ps.running_var, bn.running_var)
    joint = ps(x)                     # each sample normalised on its own
    torch.testing.assert_close(joint[1:2], PerSampleBatchNorm2d.replace(bn).train()(x[1:2]))


def test_vgg16_loads_torchvision_layout_and_rejects_other_files(tmp_path):
    torch.manual_seed(0)
    ref = VGG16Features()          # random weights: only the loading path is tested here
    sd = {f"features.{k}": v for k, v in ref.state_dict().items()}
    sd.update({"features.24.weight": torch.zeros(512, 512, 3, 3), "classifier.0.weight": torch.zeros(4, 4)})
    torch.save(sd, tmp_path / "vgg16.pth")
    vgg = load_vgg16(tmp_path / "vgg16.pth")
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in vgg.state_dict().items())
    assert isinstance(vgg[21], torch.nn.Conv2d) and len(vgg) == 22        # ends at conv4_3, pre-ReLU
    loss = PerceptualLoss(vgg)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert float(loss(x, x)) == 0.0 and float(loss(x, x.flip(-1))) > 0
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="torchvision-layout VGG16"):
        load_vgg16(tmp_path / "other.pth")


def test_config_file_and_overrides(tmp_path):
    (tmp_path / "c.toml").write_text('task = "sr"\nbetas = [0.5, 0.9]\n[model]\nchannel_max = 64\n')
    cfg = load_config("restore", tmp_path / "c.toml", ["model.rrdb_channels=8", "flip=false", "lr_g=3e-4",
                                                       'degradation={"r": [10, 50]}'])
    assert cfg.task == "sr" and cfg.betas == (0.5, 0.9) and cfg.flip is False and cfg.lr_g == 3e-4
    assert cfg.model == {"channel_max": 64, "rrdb_channels": 8} and cfg.degradation == {"r": [10, 50]}
    with pytest.raises(ValueError, match="did you mean lr_g"):
        load_config("restore", None, ["lr_q=1"])
    with pytest.raises(ValueError, match="not key=value"):
        load_config("restore", None, ["lr_g"])


# ------------------------------------------------------------------ metrics / evaluate
def _naive_ssim(x: np.ndarray, y: np.ndarray) -> float:
    g = cv2.getGaussianKernel(11, 1.5)
    w = g @ g.T
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_psnr_and_ssim_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 20, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    plus1 = np.minimum(a.astype(int) + 1, 255).astype(np.uint8)
    mse = np.mean((plus1.astype(float) - a) ** 2)
    assert metrics.psnr(a, plus1) == pytest.approx(10 * np.log10(255 ** 2 / mse))
    assert metrics.psnr(a, a) == float("inf") and metrics.ssim(a, a) == pytest.approx(1.0)
    expect = np.mean([_naive_ssim(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)])
    assert metrics.ssim(a, b) == pytest.approx(expect, abs=1e-9)
    assert metrics.ssim(a, b, "y") == pytest.approx(_naive_ssim(metrics.to_y(a), metrics.to_y(b)), abs=1e-9)
    assert metrics.ssim(a, b) == pytest.approx(metrics.ssim(b, a))


def test_evaluate_matches_by_relative_path_and_stem(tmp_path):
    rng = np.random.default_rng(1)
    gt, res = tmp_path / "gt", tmp_path / "res"
    (gt / "sub").mkdir(parents=True)
    (res / "sub").mkdir(parents=True)
    imgs = {}
    for name in ("sub/a", "b", "c"):
        img = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
        cv2.imwrite(str(gt / f"{name}.jpg"), img)
        noisy = np.clip(cv2.imread(str(gt / f"{name}.jpg")).astype(int) + rng.integers(-9, 10, img.shape), 0, 255)
        imgs[name] = noisy.astype(np.uint8)
    cv2.imwrite(str(res / "sub" / "a.png"), imgs["sub/a"])
    cv2.imwrite(str(res / "b.png"), imgs["b"])
    cv2.imwrite(str(res / "extra.png"), imgs["c"])
    res_json = tmp_path / "m.json"
    out = _run_cli(["evaluate", res, gt, "--json", res_json])
    assert out.exit_code == 0, out.output
    doc = json.loads(res_json.read_text())
    assert doc["count"] == 2 and doc["unmatched_restored"] == ["extra.png"] and doc["unmatched_gt"] == ["c.jpg"]
    a_gt = cv2.imread(str(gt / "sub" / "a.jpg"))
    row = next(r for r in doc["images"] if r["name"] == "sub/a.png")
    assert row["psnr"] == pytest.approx(metrics.psnr(imgs["sub/a"], a_gt))
    assert row["ssim"] == pytest.approx(metrics.ssim(imgs["sub/a"], a_gt))
    assert "lpips" in doc["not_computed"] and "not computed" in " ".join(out.output.split())
    cv2.imwrite(str(res / "b.png"), cv2.resize(imgs["b"], (16, 16)))
    out = _run_cli(["evaluate", res, gt])
    assert out.exit_code == 1 and "use --resize" in " ".join(out.output.split())
    assert _run_cli(["evaluate", res, gt, "--resize"]).exit_code == 0


def test_trainset_faces_make_training_samples():
    folder = SHARED / "data" / "trainset" / "utkface"
    if not folder.exists():
        pytest.skip(f"{folder} not found: needs ../shared beside the repository")
    files = sorted(folder.glob("*.jpg"))[:3]
    ds = FaceDataset(files, 128, 64)
    item = ds[(0, 2)]
    assert item["gt"].shape == (3, 128, 128) and item["lq"].shape == (3, 64, 64)
    assert -1 <= float(item["lq"].min()) and float(item["lq"].max()) <= 1
    p = item["params"]
    assert 10 <= p[1] <= 200 and 5 <= p[3] <= 50
