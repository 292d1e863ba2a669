"""Model, device and precision options shared by restore, inspect and edit."""
from __future__ import annotations

import functools

import typer

from .console import err_console, fail

# The do-no-harm options (guard.py) of every command that pastes faces: restore, video, edit.
FORCE = typer.Option(False, "--force", help="Restore every face, also those the do-no-harm check would leave "
                                           "as they were (the model is not expected to improve them).")
STRENGTH = typer.Option(1.0, "--strength", min=0.0, max=1.0,
                        help="Blend of the restored face with the input face: 1 = restored only, 0 = the input.")
COLOUR = typer.Option(True, "--color-match/--no-color-match",
                      help="Shift the restored face's mean colour to the input face's.")
# The CNN finds far more degraded and small faces than HOG (benchmarks/detect.py) in
# 1.4x HOG's wall time per photo on 2 cores of a CPU with AMX (2.4x its single-thread CPU
# time; 4.1x the wall time on CPUs without AMX, which run it in fp32). video uses it for
# the whole-frame search only.
DEFAULT_DETECTOR = "cnn"
DETECTORS = ("cnn", "cnn-degraded", "hog")          # panini_cli.detectors.make_detector's names
DETECTOR = typer.Option(DEFAULT_DETECTOR, "--detector",
                        help="Face detector: cnn (dlib's MMOD CNN in torch with weights fine-tuned on degraded "
                             "faces, each find in a larger photo confirmed by dlib's own weights: finds degraded "
                             "and small faces), cnn-degraded (the fine-tuned weights alone: more tiny old-photo "
                             "faces, but also some hands and skin-coloured blobs) or hog (dlib HOG: cheaper on "
                             "CPUs without AMX, misses many degraded faces).")


def resolve_device(device: str | None, gpu: int | None) -> str:
    """--device wins; --gpu N means cuda:N; by default the GPU of this torchrun rank (LOCAL_RANK,
    else 0). Without CUDA, fall back to the CPU with a warning."""
    import os

    import torch

    wanted = device or (f"cuda:{gpu}" if gpu is not None else None)
    if wanted is None:
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    if wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            err_console.print(f"[yellow]warning:[/] {wanted} requested but no CUDA device is available; "
                              "running on the CPU")
            return "cpu"
        index = int(wanted.split(":")[1]) if ":" in wanted else 0
        if index >= torch.cuda.device_count():
            fail(f"--gpu {index}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif wanted != "cpu":
        fail(f"--device must be cpu or cuda[:N], got {wanted!r}")
    return wanted


@functools.lru_cache(maxsize=1)
def load_restorer(model: str, device: str, precision: str):
    """registry.load_model + Restorer, with every failure as one line and exit 1.

    Cached (one entry), so a command that checks the model before starting its
    workers does not load it twice when it runs in-process."""
    from panini_models import registry
    from panini_models.checkpoints import CheckpointError
    from panini_models.restorer import Restorer
    from panini_models.runtime import check_precision

    try:
        check_precision(device, precision)
        net = registry.load_model(model, "cpu")
        return Restorer(net, device, precision)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        fail(str(e))


def check_model(model: str, device: str, precision: str) -> None:
    """Fail early (one line, exit 1) if the model cannot be loaded or the precision does not fit the
    device, without putting a copy on the device (multi-worker runs load one per worker)."""
    from panini_models import registry
    from panini_models.checkpoints import CheckpointError
    from panini_models.runtime import check_precision

    try:
        check_precision(device, precision)
        registry.load_model(model, "cpu")
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        fail(str(e))


def default_batch_size(device: str) -> int:
    """Batching does not pay on a CPU (per-image time rises); it keeps a GPU busy."""
    return 1 if device == "cpu" else 4


def batch_size_that_fits(restorer, requested: int | None) -> int:
    """--batch-size (or the device default), lowered with a warning when it does not fit the free
    memory. A batch above 1 costs one batch-1 forward to measure what a face needs."""
    from panini_models import memory

    want = requested or default_batch_size(str(restorer.device))
    if want <= 1:
        return 1
    plan = memory.plan_batch(restorer, want)
    if plan.reduced:
        err_console.print(f"[yellow]warning:[/] batch size lowered to fit memory: {plan.describe()}")
    return plan.batch


# Mirror padding before HOG (a tenth of the longer side), so faces cut by the border are found:
# on 396 degraded held-out photos (benchmarks/quality.py's inputs) HOG found 378 faces
# unpadded, 383 padded by 0.1, 373 by 0.2 (more padding, more mirror images competing). On
# the shared whole photos and first video frames: 129, 131 (a wash: HOG's marginal faces
# come and go with its grid). Video frames are searched unpadded: their faces rarely touch
# the border, and the search runs every second.
DETECT_PAD = 0.1


def make_preparer(in_size: int, aligned: bool, landmarks: str = "68", only_center_face: bool = False,
                  max_faces: int | None = None, min_face: float = 16.0, max_pixels: int | None = None,
                  pad: float = DETECT_PAD, detector: str = DEFAULT_DETECTOR, device: str = "cpu"):
    """The pipeline's decode/detect/align step; checks the face models load before any work."""
    import numpy as np

    from . import pipeline

    make_detector = None
    if not aligned:
        from .detectors import make_detector as build
        from .faces import FaceModelError

        det_options = {"pad": pad} if detector == "hog" else {}        # the CNN pads by its own rule
        try:
            build(detector, landmarks, device, **det_options).detect(np.zeros((64, 64, 3), np.uint8))
        except (FaceModelError, ValueError) as e:
            fail(str(e))
        make_detector = lambda: build(detector, landmarks, device, **det_options)   # noqa: E731 - one per thread
    options = pipeline.FaceOptions(aligned, only_center_face, max_faces, min_face, max_pixels)
    return pipeline.Preparer(in_size, options, make_detector)
