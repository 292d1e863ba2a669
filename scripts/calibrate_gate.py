"""Fit a model's do-no-harm check on faces it never trained on, and store it in the model file.

    python benchmarks/quality.py --model MODEL --first 150 --n 150 --no-hq --only-force \
        --no-identity --dump calib.jsonl
    python scripts/calibrate_gate.py MODEL_FILE calib.jsonl [--registry models/weights/default.json]

The dump holds, for every face of the calibration photos (held-out UTKFace faces 150-299,
four realistic degradations, whole-photo mode through the CLI with --force), the check's
signals (panini_cli/guard.py) and the PSNR gain of the model's face over the face left
as it was, against the ground truth. A ridge regression predicts that gain from the
signals (clipped at run time to the range calibration saw: no extrapolation); the gate
restores a face when the prediction exceeds MARGIN_DB plus half the fit's RMS error, so a face is restored only where the model has shown, on faces like it,
that it helps. The gate goes into the file's metadata (`gate`); the tensors are kept
byte for byte. With --registry the bundled model's recorded sha256 and size follow.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from panini_cli.guard import FEATURES, META_KEY, features  # noqa: E402
from panini_models.checkpoints import read_weights, save_weights  # noqa: E402

MARGIN_DB = 0.3          # the tolerance: a restored face must gain more than this
RIDGE = 1e-2


def fit(records: list[dict]) -> dict:
    x = np.array([features(r) for r in records], np.float64)
    y = np.array([r["gain_psnr"] for r in records], np.float64)
    mu, sd = x.mean(0), np.maximum(x.std(0), 1e-6)
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    w = np.linalg.solve(z.T @ z + RIDGE * len(x) * np.diag([1] * x.shape[1] + [0]), z.T @ y)
    pred = z @ w
    rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    weights = w[:-1] / sd
    bias = float(w[-1] - (w[:-1] * mu / sd).sum())
    margin = MARGIN_DB + 0.5 * rmse
    chosen = pred > margin
    return {"features": list(FEATURES), "weights": weights.tolist(), "bias": bias, "margin": margin,
            "lo": x.min(0).tolist(), "hi": x.max(0).tolist(),
            "rmse": rmse, "faces": len(y), "improved": int((y > MARGIN_DB).sum()),
            "chosen": int(chosen.sum()), "chosen_gain": float(y[chosen].mean()) if chosen.any() else None,
            "mean_gain": float(y.mean()), "cases": sorted({r["case"] for r in records})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("dumps", type=Path, nargs="+")
    ap.add_argument("--registry", type=Path, help="the registry entry (e.g. models/weights/default.json) to update")
    a = ap.parse_args()
    records = [json.loads(line) for d in a.dumps for line in d.read_text().splitlines() if line.strip()]
    gate = fit(records)
    kind, config, state, meta = read_weights(a.model)
    extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "kind", "config")}
    extra[META_KEY] = json.dumps(gate)
    sha = save_weights(a.model, state, kind, config, extra)
    if a.registry:
        entry = json.loads(a.registry.read_text())
        entry.update(sha256=sha, bytes=a.model.stat().st_size)
        a.registry.write_text(json.dumps(entry, indent=1) + "\n")
    print(json.dumps({k: v for k, v in gate.items() if k not in ("weights",)}, indent=1))
    print(f"wrote the gate into {a.model} (sha256 {sha[:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
