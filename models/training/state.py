"""Run configuration and checkpoint state: everything needed to continue a run exactly.

Configs are dataclasses (one per command) read from JSON or TOML and then patched by
`key=value` overrides (dict fields take `field.sub=value`); the resolved config is
saved in RUN_DIR/config.json at every start, so each run documents itself.

Checkpoints are one torch file holding model, optimiser, scheduler, EMA, step and RNG
states. They are written to a temporary file in the same folder, fsynced, and moved
over the previous one with os.replace, which is atomic on POSIX and Windows: a crash
or kill at any moment leaves either the old or the new complete file, never a torn
one. Only tensors and plain containers go in, so they load with weights_only=True.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or inf; raised before any optimiser step uses it."""


@dataclass
class BaseConfig:
    """Fields shared by every training command."""
    total_steps: int = 1000            # optimiser steps
    batch_size: int = 8                # per process and micro-batch
    accum: int = 1                     # micro-batches per optimiser step
    seed: int = 0
    num_workers: int = 2               # data-loader processes per training process
    ckpt_every: int = 500              # steps between checkpoints (and one at the end / on stop)
    log_every: int = 10
    val_every: int = 500               # 0 disables validation
    val_count: int = 16                # faces held out of DATA_DIR for validation (0: none)
    device: str = "auto"               # auto | cpu | cuda
    threads: int = 0                   # torch intra-op threads (0: torch's default)
    tensorboard: bool = True           # only if torch.utils.tensorboard imports
    degradation: dict = field(default_factory=dict)   # DegradationRanges overrides, e.g. {"r": [10, 50]}
    stop_at: int = 0                   # checkpoint and stop at this step (0: run to total_steps); for
                                       # stages: --resume with other settings and --set stop_at=0
    max_seconds: float = 0.0           # wall-clock budget of the step loop (0: none): when spent, the
                                       # run ends as if total_steps were reached (checkpoint, export);
                                       # the cosine schedule is re-fitted to the steps that fit in it
    export_every_s: float = 0.0        # also write the weights (float16) every this many seconds (0: off)
    export_dir: str = ""               # where those go, as latest.safetensors, and final.safetensors at
                                       # the end ("" : the run folder)
    cudnn_benchmark: bool = False      # CUDA: let cuDNN pick the fastest conv algorithms (not bitwise
                                       # reproducible across runs)

    @property
    def command(self) -> str:
        return "base"


@dataclass
class DREConfig(BaseConfig):
    """UDRL / MoCo pre-training of the degradation encoder (official moco/ defaults)."""
    preset: str = "mfr"                # Panini preset whose DRE architecture and sizes are used
    model: dict = field(default_factory=dict)         # PaniniConfig overrides (dre_channels, ...)
    hq_size: int = 0                   # HQ faces are resized to this before degrading (0: out_size)
    lq_size: int = 0                   # LQ size the DRE sees before its own pooling (0: in_size)
    batch_size: int = 32               # train.sh of the official repository (paper code: 256)
    total_steps: int = 60_000
    queue: int = 8192                  # K = 32 * 256
    momentum: float = 0.999
    temperature: float = 0.07
    lr: float = 0.03
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    cosine: bool = True                # official: an option; on here
    val_pairs: int = 64                # held-out pairs for the retrieval-accuracy check

    @property
    def command(self) -> str:
        return "dre"


@dataclass
class RestoreConfig(BaseConfig):
    """Restoration fine-tuning (official GLEAN/SRGAN-style schedule in mmedit)."""
    task: str = "mfr"                  # mfr | sr | small | catconv | base128: the Panini preset
    model: dict = field(default_factory=dict)         # PaniniConfig overrides
    lq: str = "auto"                   # eq10 | photo | bilinear | pairs (auto: bilinear for sr, else eq10)
    degradation_mix: tuple = ()        # LQ from a mixture: [{"weight", "order": eq10|photo, sigma, r, noise,
                                       # jpeg ranges (missing ones: `degradation`)}, ...]; see data.py
    batch_size: int = 1                # official: 1 per GPU
    total_steps: int = 600_000
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    betas: tuple = (0.9, 0.99)
    lr_min: float = 1e-7
    l1_weight: float = 1.0
    perceptual_weight: float = 1e-2    # VGG16 conv4_3 MSE, when a VGG file is given
    feature_match_weight: float = 1.0  # substitute for the VGG term without a VGG file (not tuned)
    gan_weight: float = 1e-2
    disc_steps: int = 1                # a G step every disc_steps steps (official 1)
    d_mbstd_group: int = 4             # minibatch-stddev group of the discriminator
    ema_decay: float = 0.999
    flip: bool = True
    amp: str = "none"                  # none | bf16 | fp16 (CUDA only)
    samples: int = 4                   # validation faces saved as an image strip

    @property
    def command(self) -> str:
        return "restore"


@dataclass
class PriorConfig(BaseConfig):
    """A short StyleGAN2 pre-training (non-saturating loss, lazy R1) to make a prior here."""
    size: int = 128
    style_dim: int = 256
    n_mlp: int = 4
    channel_base: int = 8192
    channel_max: int = 128
    batch_size: int = 16
    total_steps: int = 20_000
    lr: float = 0.002
    betas: tuple = (0.0, 0.99)
    r1_gamma: float = -1.0             # < 0: StyleGAN2-ADA heuristic 0.0002 * size^2 / global batch
    r1_every: int = 16
    ema_kimg: float = 10.0             # EMA half-life in thousands of images
    flip: bool = True
    samples: int = 16

    @property
    def command(self) -> str:
        return "prior"


CONFIGS = {"dre": DREConfig, "restore": RestoreConfig, "prior": PriorConfig}


# ------------------------------------------------------------------ config I/O
def _coerce(name: str, text: str, current):
    """Parse `text` to the type of the field's current value (JSON for containers)."""
    try:
        if isinstance(current, bool):
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, (tuple, list)):
            value = json.loads(text) if text.strip().startswith("[") else [float(v) for v in text.split(",")]
            return tuple(value)
        if isinstance(current, dict):
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
    except (ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{name}={text!r}: {e}") from None
    return text


def _json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _check_key(cfg, key: str) -> None:
    names = [f.name for f in dataclasses.fields(cfg)]
    if key not in names:
        close = difflib.get_close_matches(key, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown {cfg.command} config key {key!r}{hint}")


def apply_overrides(cfg, overrides) -> list[str]:
    """Apply `key=value` strings in order; `dictfield.sub=value` sets one entry. -> applied keys."""
    applied = []
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        top, _, sub = key.partition(".")
        _check_key(cfg, top)
        current = getattr(cfg, top)
        if sub:
            if not isinstance(current, dict):
                raise ValueError(f"{top} is not a dict field; {key}= is not allowed")
            current = dict(current)
            current[sub] = _json_value(text)
            setattr(cfg, top, current)
        else:
            setattr(cfg, top, _coerce(key, text, current))
        applied.append(key)
    return applied


def load_config(command: str, path=None, overrides=()):
    """Defaults <- file (JSON or TOML; a saved RUN_DIR/config.json works too) <- overrides."""
    cfg = CONFIGS[command]()
    if path:
        path = Path(path)
        if path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
        if "config" in data and isinstance(data["config"], dict) and "command" in data:
            data = data["config"]          # a run's config.json
        for key, value in data.items():
            _check_key(cfg, key)
            current = getattr(cfg, key)
            setattr(cfg, key, tuple(value) if isinstance(current, tuple) else value)
    apply_overrides(cfg, overrides)
    return cfg


def config_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def write_run_config(run_dir, cfg, notes: list[str], extra: dict) -> Path:
    """Write RUN_DIR/config.json (resolved config, notes such as substitutes, environment),
    keeping the history of earlier starts of the same run."""
    path = Path(run_dir) / CONFIG
    history = []
    if path.exists():
        old = json.loads(path.read_text())
        history = old.get("history", []) + [{k: old.get(k) for k in ("started", "config", "notes")}]
    doc = {"command": cfg.command, "config": config_dict(cfg), "notes": notes,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__, **extra,
           "history": history}
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True))
    return path


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------ RNG state
def rng_state() -> dict:
    """Python, NumPy (global) and torch (CPU, CUDA) generator states, weights_only-loadable."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss_next = random.getstate()
    state = {"python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
             "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                       "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ checkpoints
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:       # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path, state: dict) -> None:
    """Write `state` to `path` atomically: temp file, fsync, os.replace, fsync of the folder.

    If anything fails or the process dies before os.replace, `path` still holds the
    previous complete checkpoint; the partial temp file is removed when possible (and
    by `remove_stale_temp` at the next start when the process was killed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_checkpoint(path) -> dict:
    """Load a checkpoint written by save_checkpoint (weights_only: no pickled code runs)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def remove_stale_temp(run_dir) -> list[Path]:
    """Delete temp files left by a process killed mid-write. -> what was removed."""
    stale = sorted(Path(run_dir).glob(f".{CHECKPOINT}.tmp-*"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
