"""`panini restore INPUT... OUTPUT_DIR`: restore faces in photos or aligned crops."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer

from ..console import console, err_console, fail
from ..modelopts import COLOUR, DEFAULT_DETECTOR, DETECTOR, DETECTORS, FORCE, STRENGTH


def restore(
    paths: List[str] = typer.Argument(..., metavar="INPUT... OUTPUT_DIR",
                                      help="Image files, folders or glob patterns, then the output folder."),
    model: str = typer.Option("default", "--model", "-m", help="Registry name (default, mfr, sr, ...) or a weight file."),
    aligned: bool = typer.Option(False, "--aligned", help="Inputs are aligned face crops (FFHQ framing) of any size."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders, keeping the tree."),
    upscale: Optional[float] = typer.Option(None, "--upscale", "-s",
                                            help="Scale of the output image (whole photos: default 1; "
                                                 "aligned: default the model's output size)."),
    only_center_face: bool = typer.Option(False, "--only-center-face", help="Restore only the face nearest the centre."),
    max_faces: Optional[int] = typer.Option(None, "--max-faces", help="Restore at most the N largest faces."),
    min_face: float = typer.Option(16.0, "--min-face", help="Faces smaller than this (px) are left as they are."),
    save: str = typer.Option("", "--save", help="Also save: faces, crops, cmp (comma-separated)."),
    ext: str = typer.Option("auto", "--ext", help="Output image format: auto (as the input), png, jpg, webp, tif, bmp."),
    suffix: str = typer.Option("", "--suffix", help="Appended to each output stem."),
    skip_existing: bool = typer.Option(True, "--skip-existing/--overwrite",
                                       help="Skip inputs whose restored image exists (resume after a crash)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda[:N] (default: CUDA if present)."),
    gpu: Optional[int] = typer.Option(None, "--gpu", help="Use CUDA device N."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Faces per forward (default: 1 on CPU, 4 on GPU)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (exact), bf16, fp16 (CUDA only)."),
    workers: int = typer.Option(2, "--workers", help="Threads that decode, detect and align ahead of the model."),
    landmarks: str = typer.Option("68", "--landmarks", help="dlib landmark model: 68 (iBUG data, non-commercial "
                                                            "use) or 5 (CC0, slightly less exact alignment)."),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", help="Refuse images larger than this (decompression bombs)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-file messages."),
    json_summary: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="0,1 or all: one worker process per GPU, sharing a queue."),
    cpu_workers: int = typer.Option(1, "--cpu-workers", help="Worker processes on the CPU (many-core servers)."),
    force: bool = FORCE,
    strength: float = STRENGTH,
    colour: bool = COLOUR,
    detector: str = DETECTOR,
) -> None:
    """Restore faces: whole photos (detect, align, restore, paste back) or --aligned crops."""
    if len(paths) < 2:
        fail("give at least one INPUT and the OUTPUT_DIR")
    from .. import images, outputs
    from ..modelopts import check_model, load_restorer

    inputs, out_dir = paths[:-1], Path(paths[-1])
    try:
        kinds = outputs.parse_save(save)
        outputs.check_writable(out_dir)
    except (ValueError, OSError) as e:
        fail(str(e))
    if upscale is not None and upscale <= 0:
        fail("--upscale must be positive")
    if detector not in DETECTORS:
        fail(f"--detector must be one of {', '.join(DETECTORS)}, not {detector!r}")
    if ext != "auto" and f".{ext.lower().lstrip('.')}" not in images.EXTENSIONS:
        fail(f"--ext {ext}: not a supported image format")
    from panini_models import sharding

    rank, world = sharding.rank_and_world()
    devices = resolve_devices(device, gpu, gpus, cpu_workers)
    problems: list = []
    jobs = images.list_images(inputs, recursive=recursive, problems=problems, exclude=[out_dir])
    settings = RestoreSettings(model, precision, aligned, landmarks, only_center_face, max_faces, min_face,
                               max_pixels, batch_size, workers, str(out_dir), ext, suffix, sorted(kinds), upscale,
                               [str(p) for p, _ in jobs], force, strength, colour, [str(r) for _, r in jobs],
                               detector)
    if len(devices) == 1:
        load_restorer(model, devices[0], precision)          # fail early (one line); reused in-process
    else:
        check_model(model, devices[0], precision)            # workers load their own copies
    layout = outputs.Layout(out_dir, ext, suffix, settings.rels)
    if rank == 0:
        outputs.clear_stale_temp_files(out_dir)
    manifest = outputs.Manifest(out_dir / (f"manifest.rank{rank}.jsonl" if world > 1 else "manifest.jsonl"))
    stats = {"done": 0, "skipped": 0, "failed": 0, "faces": 0, "faces_left": 0, "faces_kept": 0}
    t_start = time.perf_counter()
    if rank == 0:
        for problem in problems:                   # images.ImageError: named inputs that cannot be used
            _report_failure(manifest, stats, problem.path, problem.reason, quiet)
    todo = []
    for src, rel in sharding.shard(jobs, rank, world):
        if skip_existing and layout.image_path(rel, src).exists():
            stats["skipped"] += 1
            manifest.add({"path": str(src), "status": "exists", "output": str(layout.image_path(rel, src))})
        else:
            todo.append((src, rel))

    progress = _progress(quiet, len(todo))
    with progress:
        task = progress.add_task("restoring", total=len(todo), faces=0)
        try:
            for record in sharding.run_workers(restore_worker, devices, settings, todo):
                if record["status"] == "failed":
                    _report_failure(manifest, stats, record["path"], record["error"], quiet)
                else:
                    stats["done"] += 1
                    stats["faces"] += record["faces"]
                    stats["faces_kept"] += record["faces_kept"]
                    stats["faces_left"] += len(record["faces_left"])
                    manifest.add(record)
                    _notes(record, quiet)
                progress.update(task, advance=1, faces=stats["faces"])
        except RuntimeError as e:
            manifest.close()
            fail(f"restore stopped: {e} (rerun to finish: finished files are skipped)")
    manifest.close()
    stats["seconds"] = round(time.perf_counter() - t_start, 3)
    if world > 1 and sharding.init_distributed():
        stats = {k: (int(v) if k != "seconds" else v) for k, v in sharding.all_reduce_counts(stats).items()}
        sharding.close_distributed()
    if rank == 0:
        _summary(stats, out_dir, quiet, json_summary)
    raise typer.Exit(1 if stats["failed"] else 0)


@dataclass
class RestoreSettings:
    """Everything a restore worker needs; picklable, so it reaches per-device processes."""
    model: str
    precision: str
    aligned: bool
    landmarks: str
    only_center_face: bool
    max_faces: Optional[int]
    min_face: float
    max_pixels: int
    batch_size: Optional[int]
    workers: int
    out_dir: str
    ext: str
    suffix: str
    kinds: list
    upscale: Optional[float]
    inputs: list
    force: bool = False
    strength: float = 1.0
    colour: bool = True
    rels: list = ()                  # every input's relative path: outputs.Layout tells colliding stems apart
    detector: str = DEFAULT_DETECTOR


def restore_worker(device: str, s: RestoreSettings, items):
    """Restore `items` on one device; yields one manifest record per input."""
    from .. import guard, images, outputs, pipeline
    from ..modelopts import batch_size_that_fits, load_restorer, make_preparer

    restorer = load_restorer(s.model, device, s.precision)
    batch_size = batch_size_that_fits(restorer, s.batch_size)
    preparer = make_preparer(restorer.in_size, s.aligned, s.landmarks, s.only_center_face, s.max_faces,
                             s.min_face, s.max_pixels, detector=s.detector, device=device)
    layout = outputs.Layout(Path(s.out_dir), s.ext, s.suffix, s.rels)
    write_args = dict(layout=layout, kinds=set(s.kinds), protected=images.ProtectedPaths(s.inputs),
                      aligned=s.aligned, upscale=s.upscale, in_size=restorer.in_size,
                      check=guard.GuardOptions(s.force, s.strength, s.colour), gate=restorer.gate,
                      ood_threshold=(restorer.vdr_stats or {}).get("threshold"))
    writer = outputs.BackgroundWriter()
    pending: list = []
    try:
        for item in pipeline.run(items, preparer, restorer, [{}], workers=s.workers,
                                 batch_size=batch_size):
            if item.error:
                yield {"path": str(item.path), "status": "failed", "error": item.error}
            else:
                pending.append((item.path, writer.submit(write_item, item, **write_args)))
            while pending and pending[0][1].done():
                yield _result(*pending.pop(0))
        for path, fut in pending:
            yield _result(path, fut)
    finally:
        writer.close()


def _result(path, fut) -> dict:
    try:
        return fut.result()
    except Exception as e:       # noqa: BLE001 - one bad write must not stop the batch
        return {"path": str(path), "status": "failed", "error": f"cannot write output: {e}".splitlines()[0]}


def resolve_devices(device, gpu, gpus, cpu_workers) -> list[str]:
    """--gpus 0,1|all: one worker per GPU; --cpu-workers N: N CPU workers; else one device."""
    from ..modelopts import resolve_device

    if gpus:
        import torch
        n = torch.cuda.device_count()
        if n == 0:
            fail("--gpus: no CUDA device is available (use --device cpu or --cpu-workers)")
        ids = list(range(n)) if gpus == "all" else [int(v) for v in gpus.split(",")]
        if any(i >= n for i in ids):
            fail(f"--gpus {gpus}: only {n} CUDA device(s) present")
        return [f"cuda:{i}" for i in ids]
    if cpu_workers > 1:
        return ["cpu"] * cpu_workers
    return [resolve_device(device, gpu)]


def write_item(item, layout, kinds, protected, aligned, upscale, in_size, check, gate=None,
               ood_threshold=None) -> dict:
    """Judge each face (guard), compose the picture and write every requested file; returns
    the manifest record."""
    from .. import guard, images, outputs
    from ..compose import compose, write_picture

    pasted, verdicts = guard.judge_item(item, 0, aligned, upscale, in_size, check, gate, ood_threshold)
    # The per-face extras first, the restored image last: its existence marks the input as
    # finished (--skip-existing), so a kill can never leave a skipped file with missing extras.
    for i, face in enumerate(item.faces):
        restored = face.results[0].image
        if "faces" in kinds:
            images.write_image(layout.face_path("faces", item.rel, i), restored, protected=protected)
        if "crops" in kinds:
            images.write_image(layout.face_path("crops", item.rel, i), face.crop, protected=protected)
        if "cmp" in kinds:
            images.write_image(layout.face_path("cmp", item.rel, i), outputs.side_by_side(face.crop, restored),
                               protected=protected)
    target = layout.image_path(item.rel, item.path)
    if not aligned and upscale in (None, 1) and all(p is None for p in pasted) \
            and target.suffix.lower() == item.path.suffix.lower():
        images.write_bytes(target, item.path.read_bytes(), protected=protected)   # unchanged: the input's own bytes
        notes = []
    else:
        notes = write_picture(target, compose(item, 0, aligned, upscale, in_size, pasted), protected)
    return {"path": str(item.path), "status": "done", "output": str(target), "faces": len(item.faces),
            "faces_kept": sum(not v.restored for v in verdicts),
            "boxes": [f.box for f in item.faces],
            "theta": [f.results[0].theta for f in item.faces],
            "checks": [v.record() for v in verdicts],
            "faces_left": [{"box": b, "reason": r} for b, r in item.skipped_faces],
            "timings": {k: round(v, 4) for k, v in item.timings.items()}, "notes": notes}


def _notes(record: dict, quiet: bool) -> None:
    if quiet:
        return
    if record["faces_left"]:
        err_console.print(f"note: {record['path']}: {len(record['faces_left'])} face(s) left as they are "
                          f"({record['faces_left'][0]['reason']})", soft_wrap=True)
    kept = [c for c in record["checks"] if not c["restored"]]
    if kept:
        err_console.print(f"note: {record['path']}: {len(kept)} of {record['faces']} face(s) left as they were "
                          f"({kept[0]['reason']})", soft_wrap=True)
    if not record["faces"]:
        err_console.print(f"note: {record['path']}: no face found; written unchanged", soft_wrap=True)


def _report_failure(manifest, stats, path, reason: str, quiet: bool) -> None:
    stats["failed"] += 1
    manifest.add({"path": str(path), "status": "failed", "error": reason})
    err_console.print(f"[red]error:[/] {path}: {reason}", soft_wrap=True, markup=True)


def _progress(quiet: bool, total: int):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[faces]} faces"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, disable=quiet or total == 0, transient=False)


def _summary(stats: dict, out_dir: Path, quiet: bool, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**stats, "output": str(out_dir)}))
        return
    if not quiet:
        rate = stats["faces"] / stats["seconds"] if stats["seconds"] else 0.0
        restored = stats["faces"] - stats["faces_kept"]
        console.print(f"done {stats['done']}, skipped {stats['skipped']} (already there), failed {stats['failed']}; "
                      f"{restored} faces restored, {stats['faces_kept']} left as they were (the check expects "
                      f"no gain from this model; --force restores them), {stats['faces_left']} skipped "
                      f"(too small or not chosen); "
                      f"{stats['seconds']:.1f} s ({rate:.2f} faces/s) -> {out_dir}")
