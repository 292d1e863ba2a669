"""Shared test helpers: where ../shared is, and skipping clearly when it is missing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PANINI_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"


def need(path: Path) -> Path:
    """Skip (never pass silently) when a ../shared file this test reads is missing."""
    if not path.exists():
        pytest.skip(f"{path} not found: this test needs ../shared beside the repository "
                    f"(or PANINI_SHARED pointing at it)")
    return path


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep every test's weight cache out of the user's real cache."""
    monkeypatch.setenv("PANINI_HOME", str(tmp_path / "panini_home"))


def write_small_model(path: Path, seed: int = 0, tweak=None) -> Path:
    """Save a randomly initialised `small` Panini-Net as our safetensors file (weights the tests make).
    `tweak(model)` may edit it first."""
    import json

    import torch

    from panini_models.checkpoints import save_weights
    from panini_models.panini import PRESETS, PaniniNet

    torch.manual_seed(seed)
    model = PaniniNet(PRESETS["small"])
    if tweak is not None:
        with torch.no_grad():
            tweak(model)
    save_weights(path, model.state_dict(), "panini", json.loads(model.config.to_json()))
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A `small` model file, written once per test module that asks for one (shared by the video tests)."""
    return write_small_model(tmp_path_factory.mktemp("model") / "small.safetensors")
