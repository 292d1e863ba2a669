"""`panini inspect IMAGE...`: how degraded each face looks to the model (vDR, theta)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..console import console, err_console, fail
from ..modelopts import DETECTOR


def inspect(
    paths: List[str] = typer.Argument(..., metavar="IMAGE...", help="Image files, folders or glob patterns."),
    model: str = typer.Option("default", "--model", "-m", help="Registry name or weight file."),
    aligned: bool = typer.Option(False, "--aligned", help="Inputs are aligned face crops."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders."),
    theta_only: bool = typer.Option(False, "--theta", help="Print only 'path<TAB>face<TAB>theta' lines."),
    dr: bool = typer.Option(False, "--dr", help="Include the 256-d degradation vector vDR."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json, csv or npy."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write json/csv/npy here (default stdout; npy needs a file)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw theta per face (and vDRs in 2-D) to this PNG."),
    sweep: bool = typer.Option(False, "--sweep", help="Table 4 protocol: degrade one clean face at several r."),
    r_values: str = typer.Option("16,32,64,128", "--r", help="Downsampling rates for --sweep."),
    sigma: float = typer.Option(3.0, "--sigma", help="Blur for --sweep (px at 1024)."),
    noise: float = typer.Option(10.0, "--noise", help="Noise std for --sweep (0-255)."),
    jpeg: int = typer.Option(30, "--jpeg", help="JPEG quality for --sweep."),
    seed: int = typer.Option(0, "--seed", help="Noise seed for --sweep."),
    landmarks: str = typer.Option("68", "--landmarks", help="dlib landmark model: 68 or 5."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda[:N]."),
    gpu: Optional[int] = typer.Option(None, "--gpu", help="Use CUDA device N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16, fp16 (CUDA)."),
    detector: str = DETECTOR,
    identity: bool = typer.Option(True, "--identity/--no-identity",
                                  help="Identity distance of the model's face from the input face (dlib)."),
) -> None:
    """Report theta (Eq. 11), theta1..theta5 and optionally vDR per image, per face for whole photos."""
    from .. import images, pipeline, report
    from ..modelopts import load_restorer, make_preparer, resolve_device

    if fmt not in ("table", "json", "csv", "npy"):
        fail(f"--format must be table, json, csv or npy, got {fmt!r}")
    if fmt == "npy" and output is None:
        fail("--format npy needs --output FILE.npy")
    restorer = load_restorer(model, resolve_device(device, gpu), precision)
    if restorer.config.variant == "catconv":
        fail(f"model '{model}' is the catconv ablation: it has no DAFI masks to inspect")
    rows: list[dict] = []
    failed = 0
    if sweep:
        rows = _sweep(paths, restorer, r_values, sigma, noise, jpeg, seed, aligned, landmarks, dr)
    else:
        problems: list = []
        jobs = images.list_images(paths, recursive=recursive, problems=problems)
        for p in problems:
            err_console.print(f"[red]error:[/] {p}", soft_wrap=True)
        failed = len(problems)
        preparer = make_preparer(restorer.in_size, aligned, landmarks, detector=detector,
                                 device=str(restorer.device))
        threshold = (restorer.vdr_stats or {}).get("threshold")
        for item in pipeline.run(jobs, preparer, restorer, [{}]):
            if item.error:
                failed += 1
                err_console.print(f"[red]error:[/] {item.path}: {item.error}", soft_wrap=True)
                continue
            if not item.faces:
                err_console.print(f"note: {item.path}: no face found", soft_wrap=True)
            for i, face in enumerate(item.faces):
                rows.append({**_row(str(item.path), i, face.box, face.results[0], dr),
                             **_check(item, face, restorer, aligned, threshold, identity and not theta_only)})
    threshold = (restorer.vdr_stats or {}).get("threshold")
    for row in rows:
        if threshold is not None and "ood_distance" in row:
            row["outside_training"] = row["ood_distance"] > threshold
    _emit(rows, fmt, output, theta_only, model, report)
    flagged = [r for r in rows if r.get("outside_training")]
    if flagged:
        err_console.print(f"note: {len(flagged)} face(s) degraded unlike anything in this model's training "
                          f"(vDR distance > {threshold:.2f}): {', '.join(Path(r['path']).name for r in flagged[:5])}",
                          soft_wrap=True)
    if plot is not None:
        report.plot(rows, plot, "theta vs r" if sweep else "theta per face")
    raise typer.Exit(1 if failed else 0)


def _row(path: str, face: int, box, result, dr: bool) -> dict:
    row = {"path": path, "face": face, "box": [round(float(v), 2) for v in box],
           "theta": round(float(result.theta), 6), "thetas": [round(float(t), 6) for t in result.thetas]}
    if dr and result.vdr is not None:
        row["vdr"] = [float(v) for v in result.vdr]
    if result.ood is not None:
        row["ood_distance"] = round(result.ood, 4)
    return row


def _check(item, face, restorer, aligned: bool, threshold, identity: bool) -> dict:
    """What `restore` would do with this face (the do-no-harm check) and, with --identity, how far
    the model's face lies from the input's in dlib's identity space (< 0.6: the same person)."""
    from .. import guard, images

    res = face.results[0]
    bgr = images.to_bgr8(item.image) if item.bgr8 is None else item.bgr8
    scale = res.image.shape[0] / guard.native_size(face.affine, restorer.in_size) if aligned else 1.0
    native, verdict = guard.check(bgr, face.affine, res.image, restorer.in_size, scale, restorer.gate,
                                  guard.relative_ood(res.ood, threshold))
    out = {"restore_check": verdict.record()}
    if identity:
        from ..identity import distance
        out["identity_distance"] = round(distance(native, res.image), 4)
    return out


def _sweep(paths, restorer, r_values, sigma, noise, jpeg, seed, aligned, landmarks, dr) -> list[dict]:
    """Degrade one clean face with Eq. 10 at each r (sigma, delta, q fixed) and read theta."""
    from panini_models.degradations import DegradationParams, degrade

    from .. import images, pipeline
    from ..modelopts import make_preparer

    if len(paths) != 1:
        fail("--sweep takes exactly one clean face image")
    try:
        rs = [float(v) for v in r_values.split(",") if v.strip()]
        params = [DegradationParams(sigma=sigma, r=r, noise=noise, jpeg=jpeg) for r in rs]
    except ValueError as e:
        fail(f"--sweep: {e}")
    path = Path(paths[0])
    preparer = make_preparer(1024, aligned, landmarks)       # the clean face aligned at the paper's HQ size
    item = preparer(path, Path(path.name))
    if item.error:
        fail(f"{path}: {item.error}")
    if not item.faces:
        fail(f"{path}: no face found (use --aligned for a face crop)")
    hq = item.faces[0].crop
    lqs = [degrade(hq, p, out_size=restorer.in_size, rng=seed) for p in params]
    results = restorer(lqs)
    return [{**_row(str(path), 0, item.faces[0].box, res, dr), "r": p.r} for p, res in zip(params, results)]


def _emit(rows: list[dict], fmt: str, output: Optional[Path], theta_only: bool, model: str, report) -> None:
    if theta_only and fmt == "table":
        for r in rows:
            tag = f"r={r['r']:g}" if "r" in r else str(r["face"])
            print(f"{r['path']}\t{tag}\t{r['theta']:.4f}")
        return
    if fmt == "table":
        from rich.table import Table
        has_ood = any("ood_distance" in r for r in rows)
        has_id, has_check = any("identity_distance" in r for r in rows), any("restore_check" in r for r in rows)
        t = Table("image", "face" if not any("r" in r for r in rows) else "r", "theta",
                  *[f"θ{i + 1}" for i in range(5)], *(["|vDR|"] if any("vdr" in r for r in rows) else []),
                  *(["vDR distance"] if has_ood else []), *(["identity dist"] if has_id else []),
                  *(["restore would"] if has_check else []))
        for r in rows:
            extra = [f"{sum(v * v for v in r['vdr']) ** 0.5:.3f}"] if "vdr" in r else []
            if has_ood:
                flag = " [red]outside training[/]" if r.get("outside_training") else ""
                extra.append(f"{r.get('ood_distance', float('nan')):.2f}{flag}")
            if has_id:
                extra.append(f"{r.get('identity_distance', float('nan')):.3f}")
            if has_check:
                c = r.get("restore_check")
                extra.append("" if c is None else "restore" if c["restored"] else "leave it")
            t.add_row(Path(r["path"]).name, f"{r['r']:g}" if "r" in r else str(r["face"]), f"{r['theta']:.4f}",
                      *[f"{v:.3f}" for v in r["thetas"]], *extra)
        console.print(t)
        return
    if fmt == "npy":
        report.to_npy(rows, output)
        return
    text = report.to_json(rows, model) if fmt == "json" else report.to_csv(rows)
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        _atomic_text(output, text)


def _atomic_text(path: Path, text: str) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
