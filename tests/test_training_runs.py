"""The run machinery: 2 gloo ranks equal 1 rank with the doubled batch, gradient accumulation
equals the larger batch, a NaN loss stops with a clear message, and a checkpoint killed
mid-write keeps the last good one. CPU, tiny models, tiny images."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from panini_models.checkpoints import read_weights
from panini_models.training.api import start
from panini_models.training.data import list_images
from panini_models.training.dist import DistInfo
from panini_models.training.loop import LOSS_NAMES, RestoreTrainer
from panini_models.training.state import CHECKPOINT, load_checkpoint, load_config, remove_stale_temp, save_checkpoint

from trainhelpers import _keep_thread_settings  # noqa: F401 - autouse: one torch thread in these tests
from trainhelpers import TINY, TINY_MODEL, _run_cli, faces, restore_cfg, train_records


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
    torch.distributed.barrier()                 # no rank leaves while its peer is in a collective
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
