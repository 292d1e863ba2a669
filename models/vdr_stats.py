"""How far a degradation vector lies from those seen in training.

A model file may carry, in its metadata (`vdr_stats`), the per-dimension mean
and standard deviation of the vDRs of its training inputs and a threshold: the
99th percentile of the training inputs' own distances. The distance is the RMS
z-score, sqrt(mean(((v - mean) / std)^2)): 1 is typical, and a value above the
threshold means the input is degraded in a way training rarely or never saw,
so the restoration deserves a closer look.
"""
from __future__ import annotations

import json

import numpy as np

META_KEY = "vdr_stats"


def compute(vdrs: np.ndarray, quantile: float = 0.99) -> dict:
    """Statistics of training vDRs (N x D), JSON-ready."""
    v = np.asarray(vdrs, np.float64)
    if v.ndim != 2 or len(v) < 2:
        raise ValueError("need at least two vDRs as an N x D array")
    mean, std = v.mean(0), np.maximum(v.std(0), 1e-8)
    stats = {"mean": mean.tolist(), "std": std.tolist(), "n": int(len(v)), "quantile": quantile}
    stats["threshold"] = float(np.quantile(distance(stats, v), quantile))
    return stats


def distance(stats: dict, vdr: np.ndarray) -> np.ndarray:
    """RMS z-score of one vDR (D,) or many (N, D) against the training statistics."""
    z = (np.asarray(vdr, np.float64) - np.asarray(stats["mean"])) / np.asarray(stats["std"])
    return np.sqrt((z * z).mean(-1))


def from_metadata(meta: dict) -> dict | None:
    text = meta.get(META_KEY)
    return json.loads(text) if text else None


def to_metadata(stats: dict) -> dict[str, str]:
    return {META_KEY: json.dumps(stats)}
