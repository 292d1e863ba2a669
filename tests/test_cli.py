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
    """`panini --help` stays fast (0.18 s here) because nothing heavy loads before a command runs."""
    code = ("import sys; from panini_cli.app import app; "
            "heavy = [m for m in ('torch', 'numpy', 'cv2', 'dlib', 'safetensors') if m in sys.modules]; "
            "assert not heavy, f'imported at start-up: {heavy}'")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "panini_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "weights" in out.stdout


def test_cli_reexecs_once_with_tuned_malloc_unless_told_not_to():
    """The real entry point: a command runs in a process that has the malloc settings (and the
    same arguments); PANINI_MALLOC=default or a user's own MALLOC_ setting is left alone."""
    from panini_cli import malloc
    env = {k: v for k, v in __import__("os").environ.items()
           if not (k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", malloc.OPT_OUT))}
    probe = ("import os, sys; from panini_cli.malloc import reexec_tuned; "
             "reexec_tuned(['-c', 'import os, sys; print(os.environ.get(\"MALLOC_MMAP_THRESHOLD_\"), sys.argv[1:])', 'a b']); "
             "print('not re-executed', os.environ.get('MALLOC_MMAP_THRESHOLD_'))")
    run = lambda extra: subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True,
                                       text=True, check=True).stdout.strip()
    if not malloc.wanted(env):
        pytest.skip("not glibc Linux: the malloc settings do not apply")
    assert run({}) == f"{malloc.TUNED['MALLOC_MMAP_THRESHOLD_']} ['a b']"
    assert run({malloc.OPT_OUT: "default"}) == "not re-executed None"
    assert run({"MALLOC_ARENA_MAX_": "2"}) == "not re-executed None"
    assert not malloc.wanted({}, libc="musl")
    out = subprocess.run(["panini", "weights", "list"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "default" in out.stdout              # re-executed once, no loop


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


@pytest.fixture
def http_dir(tmp_path):
    """A loopback HTTP server over tmp_path/www for the download tests."""
    import functools
    import http.server
    import threading

    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_checks_sha256_and_imports(tmp_path, http_dir):
    import hashlib
    www, base = http_dir
    src = _small_file(tmp_path)
    (www / "net.safetensors").write_bytes(src.read_bytes())
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    res = runner.invoke(app, ["weights", "download", f"{base}/net.safetensors", "--name", "net", "--sha256", "0" * 64])
    assert res.exit_code == 1 and "sha256 mismatch" in res.output
    assert "net" not in registry.read_index()
    assert not list((registry.weights_dir() / "downloads").glob("*.part"))
    res = runner.invoke(app, ["weights", "download", f"{base}/net.safetensors", "--name", "net", "--sha256", good])
    assert res.exit_code == 0, res.output
    assert isinstance(registry.load_model("net"), PaniniNet)


def test_download_failure_says_what_to_do_offline(http_dir):
    _www, base = http_dir
    res = runner.invoke(app, ["weights", "download", f"{base}/missing.pth"])
    assert res.exit_code == 1
    assert "cannot download" in res.output and "panini weights import missing.pth" in res.output
