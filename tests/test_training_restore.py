"""Restore fine-tuning: the loss falls, an L1-only stage never runs D, --prior/--dre/--init
load what they should, and a `panini train restore` run exports a model, resumes after
SIGTERM to the same losses and stops at stop_at. CPU, tiny models, tiny images."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from panini_models.checkpoints import read_weights
from panini_models.registry import load_model
from panini_models.training.api import start
from panini_models.training.data import list_images
from panini_models.training.dist import DistInfo
from panini_models.training.loop import RestoreTrainer
from panini_models.training.state import CHECKPOINT, load_checkpoint, load_config

from trainhelpers import _keep_thread_settings  # noqa: F401 - autouse: one torch thread in these tests
from trainhelpers import TINY, TINY_MODEL, _run_cli, faces, restore_cfg, sigterm_after_steps, train_records


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


def test_l1_only_stage_skips_the_discriminator_and_still_learns(tmp_path):
    """gan_weight=0 and feature_match_weight=0: D is never run (its weights stay bit-equal), the
    logged D terms are zero, and the L1 error still falls."""
    data = faces(tmp_path / "hq", 2)
    cfg = restore_cfg("total_steps=15", "batch_size=1", "lr_g=3e-3", "lr_min=3e-3", "flip=false",
                      "gan_weight=0", "feature_match_weight=0",
                      'degradation={"sigma": [2, 2], "r": [16, 16], "noise": [0, 0], "jpeg": [60, 60]}')
    trainer = RestoreTrainer(cfg, list_images(data), [], DistInfo())
    assert not trainer.use_d and any("D is not run" in n for n in trainer.notes)
    d_before = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    recs = [trainer.train_step() for _ in range(cfg.total_steps)]
    for k, v in trainer.D.state_dict().items():
        assert torch.equal(v, d_before[k]), k
    assert all(r["d_real"] == 0 and r["gan_g"] == 0 and r["g_total"] == r["l1"] for r in recs)
    l1 = [r["l1"] for r in recs]
    assert np.mean(l1[-4:]) < 0.8 * np.mean(l1[:4]), l1
    # with any D-based term on, D is used again
    assert RestoreTrainer(restore_cfg("gan_weight=0"), list_images(data), [], DistInfo()).use_d


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
    code, output = sigterm_after_steps(cmd, run, 3, timeout=120)
    assert code == 143, output
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
