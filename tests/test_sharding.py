"""Work sharding: ranks (torchrun environment, gloo) and per-device worker processes, on CPU."""
import json
import os
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import write_small_model
from panini_models import sharding


def test_shards_are_disjoint_and_complete():
    items = list(range(23))
    for world in (1, 2, 3, 5):
        parts = [sharding.shard(items, r, world) for r in range(world)]
        flat = [x for p in parts for x in p]
        assert sorted(flat) == items and len(flat) == len(set(flat))


def test_rank_env_validation(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="outside WORLD_SIZE"):
        sharding.rank_and_world()


def _square(device, args, items):
    for x in items:
        yield (device, os.getpid(), x * x + args)


def test_worker_processes_share_one_queue():
    out = list(sharding.run_workers(_square, ["cpu", "cpu"], 1, range(20)))
    assert sorted(v for _, _, v in out) == [x * x + 1 for x in range(20)]
    assert os.getpid() not in {pid for _, pid, _ in out}


def _boom(device, args, items):
    for x in items:
        if x == 3:
            raise ValueError("bad item 3")
        yield x


def test_worker_failure_is_raised():
    with pytest.raises(RuntimeError, match="bad item 3"):
        list(sharding.run_workers(_boom, ["cpu", "cpu"], None, range(6)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    write_small_model(root / "m.safetensors")
    src = root / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        cv2.imwrite(str(src / f"{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return root


def _records(out):
    recs = []
    for f in out.glob("manifest*.jsonl"):
        recs += [json.loads(line) for line in f.read_text().splitlines()]
    return recs


def test_cpu_workers_do_every_file_once(setup, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "panini_cli", "restore", "-m", str(setup / "m.safetensors"), "--aligned",
           "--cpu-workers", "2", "-q", str(setup / "in"), str(out)]
    subprocess.run(cmd, check=True, timeout=300)
    done = [r["path"] for r in _records(out) if r["status"] == "done"]
    assert sorted(done) == sorted(str(p) for p in (setup / "in").glob("*.png"))
    assert len(list((out / "restored_imgs").glob("*.png"))) == 7


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_ranks_split_the_inputs(setup, tmp_path):
    out = tmp_path / "out"
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        cmd = [sys.executable, "-m", "panini_cli", "restore", "-m", str(setup / "m.safetensors"), "--aligned",
               "--json", "-q", str(setup / "in"), str(out)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    summary = json.loads(outs[0].strip().splitlines()[-1])          # rank 0 prints the global tally
    assert summary["done"] == 7 and summary["failed"] == 0
    assert outs[1].strip() == ""
    per_rank = [[json.loads(line)["path"] for line in (out / f"manifest.rank{r}.jsonl").read_text().splitlines()]
                for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(per_rank[0]) + len(per_rank[1]) == 7 and abs(len(per_rank[0]) - len(per_rank[1])) <= 1
