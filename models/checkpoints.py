"""Reading foreign checkpoints safely, converting them, and our own weight files.

Our format: one safetensors file whose metadata carries `format=panini`, the
`kind` (panini, stylegan2, dre) and the JSON architecture `config`. Foreign
files (the official Panini MFR/SR restorer files, the MoCo degradation encoder,
mmgen and rosinality StyleGAN2 files) are read with `torch.load(...,
weights_only=True)`, never by executing a pickle. Every foreign key is either
consumed, checked as a known constant, or reported as training-only; anything
else is an error naming the file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import layouts
from .dre import DegradationEncoder
from .panini import PRESETS, PaniniConfig, PaniniNet
from .stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

FORMAT = "panini"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A weight file that cannot be used; str() is one line naming the file."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass
class ImportReport:
    """What happened to each key of a foreign file."""
    layout: str
    consumed: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)     # key -> reason

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for r in self.skipped.values():
            reasons[r] = reasons.get(r, 0) + 1
        parts = [f"{len(self.consumed)} tensors imported", f"{len(self.constants)} constant buffers checked"]
        parts += [f"{n} skipped ({r})" for r, n in reasons.items()]
        return f"{self.layout}: " + ", ".join(parts)


@dataclass
class Imported:
    kind: str                       # panini | stylegan2 | dre
    config: dict
    state_dict: dict[str, torch.Tensor]
    report: ImportReport


# ------------------------------------------------------------------ reading
def read_torch_file(path) -> dict:
    """torch.load with weights_only=True; argparse.Namespace (rosinality's `args`) is allowed."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "file not found") from None
    except Exception as e:        # noqa: BLE001 - any unpickling failure is reported the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(path, "cannot be read as a weights-only torch file "
                                    f"(no pickled code is executed): {first[:200]}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"expected a dict of tensors, found {type(obj).__name__}")
    return obj


def _flat_tensors(obj: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def detect_layout(obj: dict) -> str:
    """Name the layout of a loaded foreign checkpoint, or raise KeyError with what was found."""
    sd = obj.get("state_dict", obj) if isinstance(obj.get("state_dict", None), dict) else obj
    if "generator.generator.constant_input.input" in sd:
        return "panini_official"
    if "module.encoder_q.E.0.weight" in sd:
        return "dre_moco"
    if "generator_ema.constant_input.input" in sd:
        return "stylegan2_mmgen"
    if isinstance(obj.get("g_ema"), dict) and "input.input" in obj["g_ema"]:
        return "stylegan2_rosinality"
    if "input.input" in obj and "conv1.conv.weight" in obj:
        return "stylegan2_rosinality_bare"
    sample = ", ".join(list(sd)[:4])
    raise KeyError(f"top-level keys [{', '.join(map(str, list(obj)[:6]))}], first entries [{sample}]")


EXPECTED_LAYOUTS = ("official Panini restorer (generator.generator.constant_input.input), "
                    "MoCo encoder (module.encoder_q.E.0.weight), mmgen StyleGAN2 "
                    "(generator_ema.constant_input.input), rosinality StyleGAN2 (g_ema/input.input), "
                    "or a panini .safetensors file")


# --------------------------------------------------------------- converting
def convert(theirs: dict[str, torch.Tensor], model: nn.Module, layout: str, prefix: str,
            constants: dict[str, torch.Tensor], report: ImportReport, path) -> dict[str, torch.Tensor]:
    """Fill `model`'s state dict from `theirs` (keys under `prefix`); record every key used."""
    ours = model.state_dict()
    names = layouts.rename(list(ours), layout)
    out: dict[str, torch.Tensor] = {}
    missing = []
    for name, (their, (_to_theirs, to_ours)) in names.items():
        key = prefix + their
        if key not in theirs:
            missing.append(key)
            continue
        value = to_ours(theirs[key])
        if tuple(value.shape) != tuple(ours[name].shape):
            raise CheckpointError(path, f"{key}: expected shape {tuple(ours[name].shape)} "
                                        f"(after layout transform), found {tuple(theirs[key].shape)}")
        out[name] = value.to(ours[name].dtype).contiguous()
        report.consumed.append(key)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(path, f"missing {len(missing)} {layout} keys: {', '.join(missing[:3])}{more}")
    for name, value in constants.items():
        key = prefix + name
        if key not in theirs:
            raise CheckpointError(path, f"missing {layout} buffer {key}")
        if tuple(theirs[key].shape) != tuple(value.shape) or not torch.allclose(theirs[key].float(), value):
            raise CheckpointError(path, f"{key}: expected the fixed FIR kernel, found other values")
        report.constants.append(key)
    return out


def _leftovers(theirs: dict, report: ImportReport, path, training_only: dict[str, str]) -> None:
    """Every key must be consumed, a constant, or a known training-only part."""
    used = set(report.consumed) | set(report.constants)
    unknown = []
    for key in theirs:
        if key in used:
            continue
        reason = next((r for pfx, r in training_only.items() if key.startswith(pfx)), None)
        if reason is None:
            unknown.append(key)
        else:
            report.skipped[key] = reason
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise CheckpointError(path, f"{len(unknown)} unexpected {report.layout} keys: "
                                    f"{', '.join(unknown[:3])}{more}")


def infer_official_config(sd: dict[str, torch.Tensor]) -> PaniniConfig:
    """Architecture of an official-layout backbone from its shapes (prefix `generator.`)."""
    variant = "sr" if "generator.choice_vector" in sd else "mfr"
    base = PRESETS[variant]
    stem = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"generator\.encoder\.0\.(\d+)\.weight", k)))
    rrdbs = {int(m.group(1)) for k in sd if (m := re.match(r"generator\.encoder\.0\.0\.body\.(\d+)\.", k))}
    noises = [k for k in sd if re.fullmatch(r"generator\.generator\.injected_noise_\d+", k)]
    first = sd["generator.encoder.0.0.conv_first.weight"]
    growth = sd["generator.encoder.0.0.body.0.rdb1.conv1.weight"].shape[0]
    hidden = sd["generator.encoder.0.1.ChannelGate.mlp.1.weight"].shape[0]
    return PaniniConfig(**{**base.__dict__, "in_size": 64 * 2 ** (len(stem) - 1),
                           "out_size": 2 ** ((len(noises) + 3) // 2), "rrdb_channels": first.shape[0],
                           "num_rrdbs": len(rrdbs), "rrdb_growth": growth,
                           "cbam_reduction": first.shape[0] // hidden})


def import_panini_official(obj: dict, path) -> Imported:
    sd = _flat_tensors(obj.get("state_dict", obj))
    report = ImportReport("panini_official")
    try:
        cfg = infer_official_config(sd)
    except (KeyError, ValueError) as e:
        raise CheckpointError(path, f"official Panini layout, but its shapes do not describe a Panini-Net: {e}")
    model = PaniniNet(cfg)
    n_up = len(model.stylegan.to_rgbs)
    consts = layouts.generator_constants(n_up, "generator.")
    state = convert(sd, model, "panini_official", "generator.", consts, report, path)
    _leftovers(sd, report, path, {"discriminator.": "discriminator, training only",
                                  "perceptual_loss.": "perceptual-loss VGG16, training only"})
    for key in obj:
        if key != "state_dict":
            report.skipped[key] = "file metadata / optimiser state"
    return Imported("panini", json.loads(cfg.to_json()), state, report)


def import_moco(obj: dict, path) -> Imported:
    sd = _flat_tensors(obj.get("state_dict", obj))
    report = ImportReport("dre_moco")
    enc = DegradationEncoder()
    state = convert(sd, enc, "dre_moco", "", {}, report, path)
    _leftovers(sd, report, path, {"module.encoder_k.": "MoCo momentum encoder, training only",
                                  "module.queue": "MoCo negative queue, training only"})
    cfg = {"channels": [64, 64, 128, 128, 256, 256], "strides": [1, 1, 2, 1, 2, 1], "input_size": 256}
    return Imported("dre", cfg, state, report)


def _stylegan_config(g: dict[str, torch.Tensor], const_key: str, affine_key: str, noise_re: str,
                     map_re: str, rgb_key: str) -> dict:
    """Generator architecture from its shapes: size from the noise count, channels from the
    constant input (channel_max) and the last ToRGB (channel_base = channels at size * size)."""
    size = 2 ** ((sum(1 for k in g if re.fullmatch(noise_re, k)) + 3) // 2)
    n_up = size.bit_length() - 3
    return {"size": size, "style_dim": g[affine_key].shape[1],
            "n_mlp": len({m.group(1) for k in g if (m := re.fullmatch(map_re, k))}),
            "channel_base": g[rgb_key.format(n_up - 1)].shape[2] * size, "channel_max": g[const_key].shape[1]}


def import_stylegan2(obj: dict, layout: str, path) -> Imported:
    """mmgen (generator_ema. / discriminator.) or rosinality (g_ema / d) StyleGAN2 files."""
    if layout == "stylegan2_mmgen":
        sd = _flat_tensors(obj.get("state_dict", obj))
        gp, dp, flavour = "generator_ema.", "discriminator.", "mmgen"
        shape_keys = ("constant_input.input", "conv1.conv.style_modulation.linear.weight_orig",
                      r"injected_noise_\d+", r"style_mapping\.(\d+)\.bias", "to_rgbs.{}.conv.weight_orig")
        training_only = {"generator.": "non-EMA generator (the EMA copy is used)"}
    else:
        parts = {"g_ema": obj} if layout.endswith("_bare") else {
            p: obj[p] for p in ("g_ema", "d") if isinstance(obj.get(p), dict)}
        sd = {f"{p}.{k}": v for p, d in parts.items() for k, v in _flat_tensors(d).items()}
        gp, dp, flavour = "g_ema.", "d.", "rosinality"
        shape_keys = ("input.input", "conv1.conv.modulation.weight", r"noises\.noise_\d+",
                      r"style\.(\d+)\.bias", "to_rgbs.{}.conv.weight")
        training_only = {}
    report = ImportReport(f"stylegan2_{flavour}")
    cfg = _stylegan_config({k[len(gp):]: v for k, v in sd.items() if k.startswith(gp)}, *shape_keys)
    gen = StyleGAN2Generator(**cfg)
    consts = layouts.generator_constants(len(gen.to_rgbs), "")
    state = {f"generator.{k}": v for k, v in
             convert(sd, gen, f"stylegan2_{flavour}", gp, consts, report, path).items()}
    if any(k.startswith(dp) for k in sd):
        disc = StyleGAN2Discriminator(cfg["size"], cfg["channel_base"], cfg["channel_max"])
        dconsts = layouts.discriminator_constants(len(disc.blocks))
        state.update({f"discriminator.{k}": v for k, v in
                      convert(sd, disc, f"discriminator_{flavour}", dp, dconsts, report, path).items()})
    _leftovers(sd, report, path, training_only)
    if flavour == "rosinality" and not layout.endswith("_bare"):
        for key in obj:
            if key not in ("g_ema", "d"):
                report.skipped[key] = ("non-EMA generator (the EMA copy is used)" if key == "g"
                                       else "file metadata / optimiser state")
    else:
        for key in obj:
            if key != "state_dict" and not isinstance(obj[key], torch.Tensor):
                report.skipped[key] = "file metadata / optimiser state"
    return Imported("stylegan2", cfg, state, report)


def import_file(path) -> Imported:
    """Read any supported foreign checkpoint and convert it to our layout."""
    obj = read_torch_file(path)
    try:
        layout = detect_layout(obj)
    except KeyError as e:
        raise CheckpointError(path, f"unknown checkpoint layout: expected {EXPECTED_LAYOUTS}; found {e.args[0]}") from None
    if layout == "panini_official":
        return import_panini_official(obj, path)
    if layout == "dre_moco":
        return import_moco(obj, path)
    return import_stylegan2(obj, layout, path)


# ------------------------------------------------------------ our own files
def save_weights(path, state_dict: dict[str, torch.Tensor], kind: str, config: dict,
                 extra: dict[str, str] | None = None) -> str:
    """Write our safetensors file atomically; returns its sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
            "config": json.dumps(config, sort_keys=True), **(extra or {})}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file_sha256(path)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_weights(path) -> tuple[str, dict, dict[str, torch.Tensor], dict[str, str]]:
    """-> (kind, config, state_dict, metadata) of one of our safetensors files."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(path, f"safetensors file without panini metadata (format={meta.get('format')!r})")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(path, "file not found") from None
    except Exception as e:        # noqa: BLE001 - corrupt header, truncated file, ...
        raise CheckpointError(path, f"not a readable safetensors file: {str(e).splitlines()[0][:200]}") from None
    return meta["kind"], json.loads(meta["config"]), state, meta


def build(kind: str, config: dict, state_dict: dict[str, torch.Tensor], path="<weights>") -> nn.Module:
    """Instantiate the module a weight file describes and load it strictly."""
    if kind == "panini":
        model: nn.Module = PaniniNet(PaniniConfig.from_dict(config))
    elif kind == "dre":
        model = DegradationEncoder(config["channels"], config["strides"], config["input_size"])
    elif kind == "stylegan2":
        model = StyleGAN2Generator(**config)
        state_dict = {k[len("generator."):]: v for k, v in state_dict.items() if k.startswith("generator.")}
    else:
        raise CheckpointError(path, f"unknown weight kind {kind!r}")
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(path, f"{kind} weights do not fit the config: missing {result.missing_keys[:3]}, "
                                    f"unexpected {result.unexpected_keys[:3]}")
    return model


def load_panini(path) -> PaniniNet:
    """Load a PaniniNet from our safetensors file or from any official Panini file."""
    if str(path).endswith(".safetensors"):
        kind, cfg, state, _ = read_weights(path)           # _ : the file's metadata
    else:
        imported = import_file(path)
        kind, cfg, state = imported.kind, imported.config, imported.state_dict
    if kind != "panini":
        raise CheckpointError(path, f"holds a {kind} model, not a Panini-Net")
    model = build(kind, cfg, state, path)
    if str(path).endswith(".safetensors"):
        from . import vdr_stats
        model.vdr_stats = vdr_stats.from_metadata(_)      # training vDR statistics, when the file has them
        model.gate = json.loads(_["gate"]) if _.get("gate") else None   # the do-no-harm check's fit
    return model
