"""The CLI entry: fast start-up without torch, and the weight-cache commands end to end."""
import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from panini_cli.app import app
from panini_models import registry
from panini_models.panini import PaniniNet

runner = CliRunner()


def test_help_does_not_import_torch():
    code = "import sys; from panini_cli.app import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "panini_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "weights" in out.stdout


def _small_file(tmp_path, seed=0):
    from panini_models.checkpoints import save_weights
    torch.manual_seed(seed)
    model = PaniniNet("small")
    path = tmp_path / "mine.safetensors"
    save_weights(path, model.state_dict(), "panini", json.loads(model.config.to_json()))
    return path


def test_weights_import_list_verify_path(tmp_path):
    src = _small_file(tmp_path)
    res = runner.invoke(app, ["weights", "import", str(src), "--name", "mine"])
    assert res.exit_code == 0, res.output
    assert "imported mine" in res.output
    cached = registry.weights_dir() / "mine.safetensors"
    assert cached.exists()
    res = runner.invoke(app, ["weights", "list"])
    assert res.exit_code == 0 and "mine" in res.output and "not imported" in res.output   # mfr / sr
    res = runner.invoke(app, ["weights", "verify", "mine"])
    assert res.exit_code == 0 and "ok" in res.output
    res = runner.invoke(app, ["weights", "path", "mine"])
    assert res.output.strip() == str(cached)
    model = registry.load_model("mine")
    assert isinstance(model, PaniniNet) and not model.training


def test_checksum_mismatch_is_caught(tmp_path):
    src = _small_file(tmp_path)
    assert runner.invoke(app, ["weights", "import", str(src), "--name", "mine"]).exit_code == 0
    cached = registry.weights_dir() / "mine.safetensors"
    data = bytearray(cached.read_bytes())
    data[-10] ^= 0xFF                                  # flip bits inside the last tensor
    cached.write_bytes(bytes(data))
    res = runner.invoke(app, ["weights", "verify", "mine"])
    assert res.exit_code == 1 and "MISMATCH" in res.output
    with pytest.raises(ValueError, match="sha256 mismatch"):
        registry.load_model("mine")


def test_missing_official_model_says_what_to_get():
    with pytest.raises(FileNotFoundError, match=r"panini_mfr_latest\.pth.*panini weights import"):
        registry.load_model("mfr")
    res = runner.invoke(app, ["weights", "path", "sr"])
    assert res.exit_code == 1


def test_import_of_a_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("hello")
    res = runner.invoke(app, ["weights", "import", str(bad)])
    assert res.exit_code == 1
    assert str(bad) in res.output and "weights-only" in res.output
