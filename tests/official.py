"""Build files in the official Panini layouts from ../shared/reference, for the tests."""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from panini_models import recipe

from conftest import REFERENCE, need


def keys(name: str) -> dict:
    return json.loads(need(REFERENCE / f"keys_{name}.json").read_text())


def backbone_entries(variant: str) -> list:
    """[name, shape, dtype] of the backbone, restorer prefix removed, in file order."""
    return [[k[len("generator."):], s, t] for k, s, t in keys(variant)["state_dict"]
            if k.startswith("generator.")]


def recipe_arrays(variant: str) -> dict[str, np.ndarray]:
    return recipe.generate(backbone_entries(variant), variant)


def filler(shape, dtype, seed: int) -> torch.Tensor:
    """Arbitrary values for entries the recipe does not cover (discriminator, VGG)."""
    if dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 0.01


def write_restorer_file(variant: str, path: Path, arrays: dict | None = None) -> Path:
    """A restorer checkpoint as mmcv's save_checkpoint writes it (meta, state_dict, optimizer)."""
    arrays = recipe_arrays(variant) if arrays is None else arrays
    sd = OrderedDict()
    for i, (key, shape, dtype) in enumerate(keys(variant)["state_dict"]):
        if key.startswith("generator."):
            sd[key] = torch.from_numpy(arrays[key[len("generator."):]])
        else:
            sd[key] = filler(shape, dtype, i)
    meta = {"mmedit_version": "0.14.0", "iter": 600000, "config": "model = dict(type='GLEAN')"}
    optimizer = {"generator": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}}
    torch.save({"meta": meta, "state_dict": sd, "optimizer": optimizer}, path)
    return path
