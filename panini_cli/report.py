"""`inspect` results as a table, JSON, CSV or NPY, and a triage plot.

JSON schema (`panini.inspect/1`):
  {"schema": "panini.inspect/1", "model": str, "rows": [
     {"path": str, "face": int, "box": [x0, y0, x1, y1],
      "theta": float,                 # DAFI5 (64 px) GAN-prior usage ratio, Eq. 11
      "thetas": [t1, t2, t3, t4, t5], # the same for DAFI1..DAFI5 (4..64 px)
      "vdr": [float, ...] | absent,   # 256-d degradation representation, with --dr
      "r": float | absent,            # the downsampling rate, for --sweep rows
      "ood_distance": float | absent, # RMS z-score of vDR against the model's training vDRs
      "outside_training": bool | absent}]}   # ood_distance above the model's 99th-percentile threshold
CSV: one row per face: path, face, x0, y0, x1, y1, theta, theta1..theta5[, r][, vdr0..vdrN].
NPY: a structured array with the same fields (loads with allow_pickle=False).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np

SCHEMA = "panini.inspect/1"


def to_json(rows: list[dict], model: str) -> str:
    return json.dumps({"schema": SCHEMA, "model": model, "rows": rows}, indent=1)


def to_csv(rows: list[dict]) -> str:
    n_theta = max((len(r["thetas"]) for r in rows), default=5)
    n_vdr = max((len(r.get("vdr", [])) for r in rows), default=0)
    has_r = any("r" in r for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "face", "x0", "y0", "x1", "y1", "theta"] + [f"theta{i + 1}" for i in range(n_theta)]
               + (["r"] if has_r else []) + [f"vdr{i}" for i in range(n_vdr)])
    for r in rows:
        w.writerow([r["path"], r["face"], *r["box"], r["theta"], *r["thetas"]]
                   + ([r.get("r", "")] if has_r else []) + list(r.get("vdr", [])))
    return buf.getvalue()


def to_npy(rows: list[dict], path) -> None:
    n_theta = max((len(r["thetas"]) for r in rows), default=5)
    n_vdr = max((len(r.get("vdr", [])) for r in rows), default=0)
    width = max((len(r["path"]) for r in rows), default=1)
    fields = [("path", f"U{width}"), ("face", "i4"), ("box", "f8", (4,)), ("theta", "f4"),
              ("thetas", "f4", (n_theta,)), ("r", "f4")]
    if n_vdr:
        fields.append(("vdr", "f4", (n_vdr,)))
    arr = np.zeros(len(rows), dtype=fields)
    for i, r in enumerate(rows):
        arr[i]["path"], arr[i]["face"], arr[i]["box"] = r["path"], r["face"], r["box"]
        arr[i]["theta"], arr[i]["thetas"], arr[i]["r"] = r["theta"], r["thetas"], r.get("r", np.nan)
        if n_vdr:
            arr[i]["vdr"] = r["vdr"]
    import os
    import tempfile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def plot(rows: list[dict], path: Path, title: str = "theta per face") -> None:
    """A bar per face (theta, 0..1) and, when vDRs are present, their 2-D PCA projection."""
    n = max(1, len(rows))
    bar_w = max(8, min(40, 900 // n))
    width, height = max(640, 80 + n * bar_w), 360
    has_vdr = sum(1 for r in rows if r.get("vdr")) >= 2
    canvas = np.full((height + (360 if has_vdr else 0), width, 3), 255, np.uint8)
    x0, y0, h = 60, 40, height - 90
    cv2.putText(canvas, title, (x0, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = int(y0 + h * (1 - t))
        cv2.line(canvas, (x0, y), (width - 10, y), (220, 220, 220), 1)
        cv2.putText(canvas, f"{t:.2f}", (10, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for i, r in enumerate(rows):
        x = x0 + i * bar_w
        top = int(y0 + h * (1 - float(r["theta"])))
        cv2.rectangle(canvas, (x + 2, top), (x + bar_w - 2, y0 + h), (200, 120, 40), -1)
        label = (f"r={r['r']:g}" if "r" in r else Path(r["path"]).stem[:12]) + (f"#{r['face']}" if r["face"] else "")
        cv2.putText(canvas, label, (x + 2, y0 + h + 14 + 12 * (i % 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.33,
                    (0, 0, 0), 1, cv2.LINE_AA)
    if has_vdr:
        v = np.array([r["vdr"] for r in rows if r.get("vdr")], np.float64)
        v -= v.mean(0)
        _, _, vt = np.linalg.svd(v, full_matrices=False)
        p = v @ vt[:2].T
        p = (p - p.min(0)) / np.maximum(np.ptp(p, 0), 1e-12)
        oy = height + 20
        cv2.putText(canvas, "vDR, first two principal components", (x0, oy), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
        thetas = [r["theta"] for r in rows if r.get("vdr")]
        for (px, py), t in zip(p, thetas):
            c = (int(255 * (1 - t)), 60, int(255 * t))                 # blue (low theta) .. red (high)
            cv2.circle(canvas, (int(x0 + px * (width - x0 - 40)), int(oy + 20 + py * 300)), 5, c, -1, cv2.LINE_AA)
    from .images import write_image
    write_image(path, canvas)
