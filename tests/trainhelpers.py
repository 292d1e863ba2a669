"""Shared by the tests/test_training*.py files: a tiny model config, stand-in faces,
config and log helpers, and the one-torch-thread fixture.

The fixture is autouse but lives here, not in conftest.py, so that it applies only to
the training test files, each of which imports it by name.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from panini_cli.app import app
from panini_models.training.loop import LOSS_NAMES
from panini_models.training.state import load_config

runner = CliRunner()

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


def sigterm_after_steps(cmd: list, run_dir: Path, steps: int = 3, timeout: float = 180) -> tuple[int, str]:
    """Start a training command, send it SIGTERM once `steps` steps are logged; -> (exit code, output)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (Path(run_dir) / "log.jsonl").exists() and len(train_records(run_dir)) >= steps:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=timeout)[0]
    return proc.returncode, output


def _run_cli(args, **kw):
    res = runner.invoke(app, [str(a) for a in args], **kw)
    return res
