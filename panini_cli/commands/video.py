"""`panini video INPUT [-o OUTPUT]`: restore the faces in a video, keeping its audio and frame rate."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import typer

from ..console import console, err_console, fail
from ..modelopts import COLOUR, DETECTOR, FORCE, STRENGTH

CONTAINERS = (".mp4", ".mkv", ".mov", ".m4v", ".webm")


def default_output(src: Path) -> tuple[Path, str | None]:
    """`<stem>_restored<ext>` beside the input, or in ./results when that folder is read-only."""
    ext = src.suffix.lower() if src.suffix.lower() in (".mp4", ".mkv", ".mov", ".m4v") else ".mp4"
    name = f"{src.stem}_restored{ext}"
    if os.access(src.resolve().parent, os.W_OK):
        return src.parent / name, None
    return Path("results") / name, f"{src.parent} is not writable; writing to results/{name}"


def video(
    input: Path = typer.Argument(..., help="The video to restore (any format ffmpeg reads).", show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Output file or folder (default: INPUT_restored.mp4 beside the input). "
                                               "Its extension picks the container: mp4, mkv, mov, webm."),
    model: str = typer.Option("default", "--model", "-m", help="Registry name (default, mfr, sr, ...) or a weight file."),
    start: Optional[str] = typer.Option(None, "--start", help="Start at this time (seconds, mm:ss or hh:mm:ss)."),
    duration: Optional[str] = typer.Option(None, "--duration", "-t", help="Restore only this long (seconds, mm:ss or hh:mm:ss)."),
    codec: str = typer.Option("libx264", "--codec", help="Video encoder (libx264, libx265, libvpx-vp9, libsvtav1, ...)."),
    crf: int = typer.Option(18, "--crf", help="Quality for x264/x265/vp9/av1 (lower is better; 18 is near transparent)."),
    preset: str = typer.Option("veryfast", "--preset", help="x264/x265 speed preset (ultrafast ... veryslow; "
                                                            "medium: ~1 dB better at CRF 18, 3x the encoding time)."),
    pix_fmt: str = typer.Option("yuv420p", "--pix-fmt", help="Output pixel format (yuv420p plays everywhere)."),
    smooth: float = typer.Option(2.0, "--smooth", help="Landmark smoothing along each face track: Gaussian sigma "
                                                       "in frames, centred (no lag); 0 = off."),
    smooth_vdr: float = typer.Option(0.0, "--smooth-vdr", help="Smooth each face's degradation vector (vDR, which "
                                                               "sets the DAFI masks) along its track: moving-average "
                                                               "time constant in frames (causal); 0 = off."),
    detect_every: Optional[int] = typer.Option(None, "--detect-every", help="Search the whole frame for new faces "
                                                                         "every N frames (default: once a second); "
                                                                         "also at every scene cut. Known faces are "
                                                                         "tracked every frame.", show_default=False),
    chunk_frames: int = typer.Option(250, "--chunk-frames", help="Frames per chunk; an interrupted run resumes "
                                                                 "from the last finished chunk."),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue an interrupted run of the same "
                                                                 "command, or start over."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
    max_faces: Optional[int] = typer.Option(None, "--max-faces", help="Restore at most the N largest faces."),
    min_face: float = typer.Option(16.0, "--min-face", help="Faces smaller than this (px) are left as they are."),
    landmarks: str = typer.Option("68", "--landmarks", help="dlib landmark model: 68 (iBUG data, non-commercial "
                                                            "use) or 5 (CC0, slightly less exact alignment)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda[:N] (default: CUDA if present)."),
    gpu: Optional[int] = typer.Option(None, "--gpu", help="Use CUDA device N."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Faces per forward, across frames "
                                                                              "(default: 1 on CPU, 4 on GPU)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (exact), bf16, fp16 (CUDA only)."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="0,1 or all: one worker process per GPU, each taking "
                                                            "the next chunk; the same frames as one device."),
    cpu_workers: int = typer.Option(1, "--cpu-workers", help="Worker processes on the CPU (many-core servers)."),
    force: bool = FORCE,
    strength: float = STRENGTH,
    colour: bool = COLOUR,
    detector: str = DETECTOR,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or notes."),
    json_summary: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Restore the faces in a video: streamed (flat memory), audio kept, faces tracked and steadied."""
    from .. import video as vid
    from .restore import resolve_devices

    src = input
    if not src.is_file():
        fail(f"{src}: no such file")
    note, out = None, output
    if out is None:
        out, note = default_output(src)
    elif out.is_dir() or str(output).endswith(os.sep):         # -o FOLDER: the default name inside it
        out = out / default_output(src)[0].name
    elif out.suffix.lower() not in CONTAINERS:
        fail(f"--output {out}: unknown container {out.suffix!r} (use one of {', '.join(CONTAINERS)})")
    if out.resolve() == src.resolve():
        fail(f"--output {out} is the input; choose another name")
    if out.exists() and not overwrite:
        fail(f"{out} exists (use --overwrite to replace it, or -o for another name)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise OSError("permission denied")
    except OSError as e:
        fail(f"{out.parent}: output folder is not writable ({getattr(e, 'strerror', None) or e})")
    if (detect_every is not None and detect_every < 1) or chunk_frames < 1 or smooth < 0 or smooth_vdr < 0:
        fail("--detect-every and --chunk-frames must be >= 1, --smooth and --smooth-vdr >= 0")
    try:
        settings = vid.Settings(start=vid.parse_time(start) or 0.0, duration=vid.parse_time(duration),
                                smooth=smooth, smooth_vdr=smooth_vdr, detect_every=detect_every,
                                chunk_frames=chunk_frames, landmarks=landmarks, min_face=min_face, max_faces=max_faces,
                                encoding=vid.Encoding(codec, crf, preset, pix_fmt), force=force,
                                strength=strength, colour=colour, detector=detector)
    except vid.VideoError as e:
        fail(str(e))
    if settings.duration is not None and settings.duration <= 0:
        fail("--duration must be positive")

    import torch

    devices = resolve_devices(device, gpu, gpus, cpu_workers)
    threads = torch.get_num_threads()
    streams = 1
    if devices == ["cpu"]:
        from ..modelopts import load_restorer        # cached: _run gets this same one

        streams, per_stream = cpu_streams(load_restorer(model, "cpu", precision).in_size, threads)
        torch.set_num_threads(per_stream)
    try:
        _run(src, out, note, settings, model, devices, precision, landmarks, batch_size, resume, quiet,
             json_summary, streams)
    finally:
        torch.set_num_threads(threads)          # in-process callers (tests) get theirs back


def cpu_streams(in_size: int, cores: int) -> tuple[int, int]:
    """(model streams, torch threads per stream) for a video on `cores` CPU cores.

    A light model (faces of at most 128 px in) spends ~0.1 s of CPU per face, and the
    work beside it (decode, track, paste, encode: ~40 ms a frame) takes a real share of
    the CPU; one stream over all cores idles them at every small op and stalls whenever
    a core is busy with a frame. Up to 4 batches in flight, one per core group, fill the
    gaps: on 2 cores the small model ran at 9.1 frames/s with 2 streams of 1 thread,
    against 6.9 with 1 stream of 2 and 6.0 with 1 stream of 1 (same clip and settings).
    A 512 px model spends seconds per face: one stream, all cores.
    """
    if in_size > 128 or cores < 2:
        return 1, max(1, cores)
    streams = min(cores, 4)
    return streams, max(1, cores // streams)


def _run(src, out, note, settings, model, devices, precision, landmarks, batch_size, resume, quiet, json_summary,
         streams=1):
    from .. import video as vid
    from ..modelopts import batch_size_that_fits, check_model, default_batch_size, load_restorer, make_preparer

    workers = None
    if len(devices) == 1:
        restorer = load_restorer(model, devices[0], precision)
        in_size, variant = restorer.in_size, restorer.config.variant
    else:                      # each worker process loads its own copy; this one only tracks
        from panini_models import registry

        from ..video.workers import Workers
        check_model(model, devices[0], precision)
        net = registry.load_model(model, "cpu")
        restorer, in_size, variant = None, net.config.in_size, net.config.variant
        workers = Workers(devices, model, precision, batch_size, in_size, net.dre)
        del net
    search_device = devices[0] if str(devices[0]).startswith("cuda") else "cpu"
    detector = make_preparer(in_size, False, landmarks, pad=0.0, detector=settings.detector,
                             device=search_device).make_detector()   # checks the face models load
    bs = (batch_size_that_fits(restorer, batch_size) if restorer is not None
          else batch_size or default_batch_size(devices[0]))
    if settings.smooth_vdr and variant != "mfr" and not quiet:
        err_console.print(f"note: --smooth-vdr has no effect: the {variant} model has "
                          f"{'a learned constant vDR' if variant == 'sr' else 'no DAFI masks'}", soft_wrap=True)
    if note and not quiet:
        err_console.print(f"note: {note}", soft_wrap=True)

    progress = _progress(quiet)
    state = {"task": None, "faces": 0, "t0": time.perf_counter(), "frames": 0}

    def events(kind, **data):
        if kind == "note" and not quiet:
            progress.console.print(f"note: {data['text']}", soft_wrap=True, markup=False)
        elif kind == "start":
            state["task"] = progress.add_task(src.name, total=data["total"], completed=data["done"], rate="")
            state["t0"], state["frames"] = time.perf_counter(), 0
        elif kind == "frame":
            state["faces"] += data["faces"]
            state["frames"] += 1
            rate = state["frames"] / max(1e-9, time.perf_counter() - state["t0"])
            progress.update(state["task"], advance=1, rate=f"{rate:.2f} frames/s")

    from panini_models import registry
    weights = registry.resolve(model)[0].resolve()        # load_restorer succeeded, so this resolves
    model_id = f"{weights}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}"   # a resumed run uses the same
    t0 = time.perf_counter()
    try:
        with progress:
            summary = vid.restore_video(src, out, settings, restorer, model_id, detector, batch_size=bs,
                                        resume=resume, events=events, workers=workers, streams=streams)
    except vid.VideoError as e:
        fail(str(e))
    except KeyboardInterrupt:
        partial = out.with_name(out.name + ".partial")
        fail(f"interrupted; finished chunks are kept in {partial}: run the same command again to resume", 130)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["frames_per_second"] = round(state["frames"] / max(1e-9, summary["seconds"]), 3)
    if json_summary:
        print(json.dumps(summary))
    elif not quiet:
        console.print(f"{summary['frames']} frames ({summary['faces'] - summary['faces_kept']} faces restored, "
                      f"{summary['faces_kept']} left as they were by the do-no-harm check"
                      f"{', ' + str(summary['resumed_chunks']) + ' chunk(s) from the last run' if summary['resumed_chunks'] else ''})"
                      f" in {summary['seconds']:.1f} s -> {out}", soft_wrap=True)
    if summary["error"]:
        err_console.print(f"[red]error:[/] {src}: {summary['error']}; {out} holds the frames restored before it",
                          soft_wrap=True)
        raise typer.Exit(1)


def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=err_console, disable=quiet, transient=False)
