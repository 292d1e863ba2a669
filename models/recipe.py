"""The deterministic weight recipe of ../shared/reference (NumPy only).

It regenerates, key by key in the official file order, the exact state_dict
whose forward passes were computed with the official implementation (the
golden files). With it, equality to the official network is checked without
the official weights, which cannot be downloaded here.
"""
from __future__ import annotations

import hashlib
import math
import re
from typing import Iterable

import numpy as np

S2 = math.sqrt(2.0)
SEEDS = {"mfr": 20220301, "sr": 20220302}

_BN = re.compile(r"^(deg_encoder\.E\.(1|4|7|10|13|16)|encoder\.0\.1\.SpatialGate\.spatial\.bn)\.(\w+)$")
_KERNEL = re.compile(r"^generator\.(convs\.\d+\.conv\.blur|to_rgbs\.\d+\.upsample)\.kernel$")
_TO_RGB = re.compile(r"^generator\.to_rgb(1|s\.\d+)\.conv\.weight_orig$")
_SG_BIAS = re.compile(r"^generator\.(conv1\.activate|convs\.\d+\.activate|to_rgb1|to_rgbs\.\d+|style_mapping\.\d+)\.bias$")

# (regex, gain for MFR, gain for SR); None where the key does not exist.
_GAINS = [
    (r"^deg_encoder\.E\.(0|3|6|9|12|15)\.weight$", S2, None),
    (r"^deg_encoder\.mlp\.0\.weight$", S2, None),
    (r"^encoder\.0\.0\.body\.\d+\.rdb[123]\.conv[1-4]\.weight$", S2, S2),
    (r"^encoder\.0\.1\.ChannelGate\.mlp\.1\.weight$", S2, S2),
    (r"^encoder\.0\.(2|4|6|8)\.weight$", S2, S2),
    (r"^encoder\.[1-4]\.0\.weight$", S2, S2),
    (r"^encoder\.5\.0\.weight$", S2, S2),
    (r"^AFS_maskGen\.mapping\.0\.weight$", S2, S2),
    (r"^deg_encoder\.mlp\.2\.weight$", 1.0, None),
    (r"^encoder\.0\.0\.conv_first\.weight$", 1.0, 1.0),
    (r"^encoder\.0\.0\.body\.\d+\.rdb[123]\.conv5\.weight$", 1.0, 1.0),
    (r"^encoder\.0\.1\.fea_preprocess\.weight$", 1.0, 1.0),
    (r"^encoder\.0\.1\.ChannelGate\.mlp\.3\.weight$", 1.0, 1.0),
    (r"^encoder\.0\.1\.SpatialGate\.spatial\.conv\.weight$", 1.0, 1.0),
    (r"^fusion_out\.[0-4]\.weight$", 1.0, 1.0),
    (r"^encoder\.0\.0\.conv_body\.weight$", 0.7, 0.015),
    (r"^encoder\.5\.3\.weight$", 4.0, 4.0),
    (r"^AFS_maskGen\.mapping\.2\.weight$", 0.3, 0.3),
]


def _gain(key: str, variant: str) -> float:
    matches = [(mfr, sr) for rx, mfr, sr in _GAINS if re.match(rx, key)]
    if len(matches) != 1:
        raise KeyError(f"recipe: {key} matches {len(matches)} gain rows, expected 1")
    gain = matches[0][0 if variant == "mfr" else 1]
    if gain is None:
        raise KeyError(f"recipe: no {variant} gain for {key}")
    return gain


def _rule(key: str, ndim: int) -> tuple[int, object]:
    """-> (rule number, formula or constant). Formulas take z (float64) and return float64."""
    if key.endswith("num_batches_tracked"):
        return 1, np.array(0, dtype=np.int64)
    if _KERNEL.match(key):
        k = np.array([1, 3, 3, 1], dtype=np.float32)
        return 2, (np.outer(k, k) / 16).astype(np.float32)
    bn = _BN.match(key)
    if bn:
        leaf = bn.group(3)
        return 3, {"weight": lambda z: 1.0 + z * 0.1, "bias": lambda z: z * 0.1,
                   "running_mean": lambda z: z * 0.1, "running_var": lambda z: 0.5 + 0.5 * (z * z)}[leaf]
    if re.match(r"^generator\.injected_noise_\d+$", key):
        return 4, lambda z: z
    if key == "generator.constant_input.input":
        return 5, lambda z: z
    if key.endswith(".style_modulation.bias"):
        return 6, lambda z: 1.0 + z * 0.1
    if _TO_RGB.match(key):
        return 7, lambda z: z * 0.25
    if key.endswith(".weight_orig"):
        return 8, lambda z: z * 1.0
    if key.endswith(".noise_injector.weight"):
        return 9, lambda z: z * 0.1
    if _SG_BIAS.match(key):
        return 10, lambda z: z * 0.1
    if key == "choice_vector":
        return 11, lambda z: z * 1.0
    if key.endswith(".weight") and ndim in (2, 4):
        return 12, None                      # gain / sqrt(fan_in), filled in by the caller
    if key.endswith(".bias") and ndim == 1:
        return 13, lambda z: z * 0.1
    raise KeyError(f"recipe: no rule for {key}")


def generate(entries: Iterable, variant: str, seed: int | None = None) -> dict[str, np.ndarray]:
    """entries: [name, shape, dtype] of the backbone (without the restorer's `generator.` prefix),
    in file order. Returns name -> numpy array, exactly as the reference recipe makes it."""
    rng = np.random.default_rng(SEEDS[variant] if seed is None else seed)
    out: dict[str, np.ndarray] = {}
    for key, shape, _dtype in entries:
        shape = tuple(shape)
        rule, formula = _rule(key, len(shape))
        if isinstance(formula, np.ndarray):
            out[key] = formula.reshape(shape)
            continue
        n = int(np.prod(shape)) if shape else 1
        z = rng.standard_normal(n).reshape(shape)
        if rule == 12:
            scale = _gain(key, variant) / math.sqrt(float(np.prod(shape[1:])))
            v = z * scale
        else:
            v = formula(z)
        out[key] = np.asarray(v).astype(np.float32)
    return out


def state_dict_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over key + NUL + little-endian C-order bytes, in order."""
    h = hashlib.sha256()
    for key, v in arrays.items():
        h.update(key.encode() + b"\0" + np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def array_sha256(v: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")).tobytes()).hexdigest()


def count_draws(entries: Iterable) -> int:
    """How many standard normals the recipe draws for these entries."""
    total = 0
    for key, shape, _dtype in entries:
        _rule_no, formula = _rule(key, len(shape))
        if not isinstance(formula, np.ndarray):
            total += int(np.prod(shape)) if shape else 1
    return total
