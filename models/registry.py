"""Named models, the weight cache, and `load_model()`.

The cache lives in $PANINI_HOME, else $XDG_CACHE_HOME/panini, else
~/.cache/panini. `weights/index.json` records, for every imported file, its
sha256 at import time; loading checks it again so a truncated or swapped file
is caught. Names: `default` (shipped inside the package once trained), `mfr`
and `sr` (the official checkpoints, once imported), and any name given at import.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import CheckpointError, file_sha256, import_file, read_weights, save_weights

PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    source_file: str            # what the user must fetch when it is missing
    where: str                  # where that file comes from


KNOWN = {
    "default": KnownModel("default", "small Panini-Net trained by this project, shipped in the package",
                          "default.safetensors", "ships with panini (models/weights/)"),
    "mfr": KnownModel("mfr", "official Panini_MFR, 512 -> 1024 multi-degradation restoration",
                      "panini_mfr_latest.pth", "the Google Drive link in the official jianzhangcs/panini README"),
    "sr": KnownModel("sr", "official Panini_SR, 64 -> 1024 16x super-resolution",
                     "panini_sr_latest.pth", "the Google Drive link in the official jianzhangcs/panini README"),
}


def home() -> Path:
    if os.environ.get("PANINI_HOME"):
        return Path(os.environ["PANINI_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "panini"


def weights_dir() -> Path:
    return home() / "weights"


def _index_path() -> Path:
    return weights_dir() / "index.json"


def read_index() -> dict[str, dict]:
    path = _index_path()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"weight index is not valid JSON ({e.msg}); delete it and re-import") from None


def _write_index(index: dict) -> None:
    path = _index_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".index.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def default_name(kind: str, config: dict) -> str:
    if kind == "panini":
        return config["variant"] if config["variant"] in ("mfr", "sr") else f"panini-{config['variant']}"
    if kind == "dre":
        return "dre-moco"
    return f"stylegan2-{config['size']}"


def import_weights(source, name: str | None = None) -> tuple[str, dict, object]:
    """Convert a foreign or own weight file into the cache. -> (name, index entry, report or None)."""
    source = Path(source)
    if source.suffix == ".safetensors":
        kind, config, state, meta = read_weights(source)
        report = None
    else:
        imported = import_file(source)
        kind, config, state, report = imported.kind, imported.config, imported.state_dict, imported.report
    name = name or default_name(kind, config)
    if name == "default":
        raise ValueError("the name 'default' is reserved for the bundled model")
    target = weights_dir() / f"{name}.safetensors"
    sha = save_weights(target, state, kind, config, {"source": source.name})
    entry = {"file": target.name, "sha256": sha, "kind": kind, "source": str(source.resolve()),
             "imported": time.strftime("%Y-%m-%dT%H:%M:%S")}
    index = read_index()
    index[name] = entry
    _write_index(index)
    return name, entry, report


def download(url: str, name: str | None = None, sha256: str | None = None, progress=None,
             timeout: float = 60.0) -> tuple[str, dict, object]:
    """Fetch a weight file by URL into the cache (checking sha256 if given), then import it.

    `progress(done_bytes, total_bytes_or_None)` is called as data arrives. A
    network failure raises ConnectionError naming the URL and what to do offline.
    """
    import hashlib
    import urllib.error
    import urllib.request

    target_dir = weights_dir() / "downloads"
    target_dir.mkdir(parents=True, exist_ok=True)
    filename = Path(urllib.request.urlparse(url).path).name or "download.pth"
    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=target_dir)
    h = hashlib.sha256()
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as f:
                total = int(resp.headers.get("Content-Length") or 0) or None
                done = 0
                while True:
                    block = resp.read(1 << 20)
                    if not block:
                        break
                    f.write(block)
                    h.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
            if total is not None and done != total:
                raise ConnectionError(f"{url}: download ended after {done} of {total} bytes")
        except (urllib.error.URLError, OSError, ValueError) as e:
            if isinstance(e, ConnectionError):
                raise
            reason = getattr(e, "reason", e)
            raise ConnectionError(f"{url}: cannot download ({reason}); offline, fetch {filename} by other means "
                                  f"and run `panini weights import {filename}`") from None
        actual = h.hexdigest()
        if sha256 and actual != sha256.lower():
            raise ValueError(f"{url}: sha256 mismatch (expected {sha256[:12]}..., got {actual[:12]}...); "
                             "the file is corrupt or not the one expected; nothing was imported")
        final = target_dir / filename
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return import_weights(final, name)


def resolve(name_or_path: str) -> tuple[Path, str | None]:
    """-> (file, expected sha256 or None). Raises FileNotFoundError with what to do."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".safetensors", ".pth", ".pt", ".tar", ".ckpt") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"{path}: file not found")
        return path, None
    if name_or_path == "default":
        bundled = PACKAGE_WEIGHTS / "default.safetensors"
        if not bundled.exists():
            raise FileNotFoundError("the bundled default model is not in this installation "
                                    f"(expected {bundled}); use --model PATH or import weights")
        manifest = PACKAGE_WEIGHTS / "default.json"
        expected = json.loads(manifest.read_text()).get("sha256") if manifest.exists() else None
        return bundled, expected
    entry = read_index().get(name_or_path)
    if entry is None:
        known = KNOWN.get(name_or_path)
        if known:
            raise FileNotFoundError(
                f"model '{name_or_path}' is not imported: get {known.source_file} from {known.where}, "
                f"then run `panini weights import {known.source_file}`")
        raise FileNotFoundError(f"no model or file named '{name_or_path}' "
                                f"(known: {', '.join(sorted(set(KNOWN) | set(read_index())))})")
    return weights_dir() / entry["file"], entry["sha256"]


def verify(name_or_path: str) -> tuple[Path, str, str | None]:
    """-> (file, actual sha256, expected sha256). Equal hashes mean the file is intact."""
    path, expected = resolve(name_or_path)
    return path, file_sha256(path), expected


def load_model(name_or_path: str = "default", device: str = "cpu", check: bool = True):
    """Load a Panini-Net by registry name or path, checking the recorded sha256, in eval mode."""
    from .checkpoints import load_panini

    path, expected = resolve(name_or_path)
    if check and expected is not None:
        actual = file_sha256(path)
        if actual != expected:
            raise CheckpointError(path, f"sha256 mismatch (expected {expected[:12]}..., found {actual[:12]}...): "
                                        "the file changed since import; re-import it")
    return load_panini(path).to(device).eval()
