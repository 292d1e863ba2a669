"""`panini degrade HQ... OUT_DIR`: synthesise LQ faces with the paper's Eq. 10."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..console import console, err_console, fail


def _range(text: str, name: str) -> tuple[float, float]:
    parts = [p for p in text.replace(":", ",").split(",") if p.strip()]
    if len(parts) != 2:
        fail(f"--{name}-range takes LO,HI, got {text!r}")
    return float(parts[0]), float(parts[1])


def degrade(
    paths: List[str] = typer.Argument(..., metavar="HQ... OUT_DIR", help="Clean images (files, folders, globs), then the output folder."),
    r: Optional[float] = typer.Option(None, "--r", help="Fixed downsampling rate (at 1024 px)."),
    sigma: Optional[float] = typer.Option(None, "--sigma", help="Fixed Gaussian blur std (px at 1024)."),
    noise: Optional[float] = typer.Option(None, "--noise", help="Fixed noise std (0-255)."),
    jpeg: Optional[int] = typer.Option(None, "--jpeg", help="Fixed JPEG quality (1-100)."),
    r_range: str = typer.Option("10,200", "--r-range", help="Random r range when --r is not given."),
    sigma_range: str = typer.Option("0.2,10", "--sigma-range", help="Random sigma range."),
    noise_range: str = typer.Option("0,25", "--noise-range", help="Random noise range."),
    jpeg_range: str = typer.Option("5,50", "--jpeg-range", help="Random JPEG quality range."),
    size: Optional[int] = typer.Option(512, "--size", help="Output size (square); 0 keeps the input size."),
    seed: int = typer.Option(0, "--seed", help="Base seed; file i uses seed + i."),
    recursive: bool = typer.Option(False, "--recursive", "-r"),
    workers: int = typer.Option(1, "--workers", "-j", help="Parallel processes (joblib)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Write degraded copies (PNG) and params.jsonl with every parameter drawn."""
    from panini_models.degradations import DegradationParams, DegradationRanges, degrade_batch

    from .. import images, outputs

    if len(paths) < 2:
        fail("give at least one HQ input and the OUT_DIR")
    out_dir = Path(paths[-1])
    try:
        ranges = DegradationRanges(sigma=_range(sigma_range, "sigma"), r=_range(r_range, "r"),
                                   noise=_range(noise_range, "noise"),
                                   jpeg=tuple(int(v) for v in _range(jpeg_range, "jpeg")))
        fixed = {k: v for k, v in (("r", r), ("sigma", sigma), ("noise", noise), ("jpeg", jpeg)) if v is not None}
        if fixed:     # fixed values pin their range; the rest stay random
            ranges = DegradationRanges(**{k: (fixed[k], fixed[k]) if k in fixed else getattr(ranges, k)
                                          for k in ("sigma", "r", "noise", "jpeg")})
        outputs.check_writable(out_dir)
    except (ValueError, OSError) as e:
        fail(str(e))
    problems: list = []
    jobs = images.list_images(paths[:-1], recursive=recursive, problems=problems)
    failed = len(problems)
    for p in problems:
        err_console.print(f"[red]error:[/] {p}", soft_wrap=True)
    protected = images.ProtectedPaths(p for p, _ in jobs)
    manifest = out_dir / "params.jsonl"
    done = 0
    with open(manifest, "a", encoding="utf-8") as log:
        for start in range(0, len(jobs), 64):
            chunk = jobs[start:start + 64]
            hq = []
            for path, _ in chunk:
                try:
                    hq.append(images.to_bgr8(images.read_image(path)))
                except images.ImageError as e:
                    hq.append(None)
                    err_console.print(f"[red]error:[/] {e}", soft_wrap=True)
            ok = [i for i, h in enumerate(hq) if h is not None]
            failed += len(chunk) - len(ok)
            results = degrade_batch([hq[i] for i in ok], [seed + start + i for i in ok], ranges,
                                    out_size=size or None, n_jobs=workers)
            for i, (lq, params) in zip(ok, results):
                path, rel = chunk[i]
                target = out_dir / rel.parent / f"{rel.stem}.png"
                images.write_image(target, lq, protected=protected)
                log.write(json.dumps({"input": str(path), "output": str(target), "seed": seed + start + i,
                                      **params.to_dict()}) + "\n")
                done += 1
            log.flush()
    if not quiet:
        console.print(f"{done} degraded images in {out_dir} (parameters in {manifest})"
                      + (f"; {failed} failed" if failed else ""))
    raise typer.Exit(1 if failed else 0)
