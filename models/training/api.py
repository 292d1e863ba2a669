"""One entry point per run, shared by the CLI, the tests and torchrun workers.

`start()` sets up a run (process group, data split, trainer, RUN_DIR/config.json with
every substitute or missing piece spelled out in `notes`) and hands it to the driver.
`export_checkpoint()` turns any checkpoint into the deliverable weight file, so a run
can be exported while it is still training elsewhere.
"""
from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from . import dist
from .data import list_images, split_holdout
from .runner import RunLogger, run
from .state import CHECKPOINT, load_checkpoint, remove_stale_temp, write_run_config

EXPORT_NAMES = {"restore": "final.safetensors", "dre": "dre.safetensors", "prior": "prior.safetensors"}


def start(cfg, data_dir, run_dir, *, resume: bool = False, prior=None, dre=None, vgg=None, pairs=None,
          val_dir=None, init=None, console: Console | None = None) -> dict:
    """Train (or continue) one run. -> {"status", "step", "export"?, "notes"}.

    Raises NonFiniteLoss if a loss goes NaN/inf (RUN_DIR/checkpoint.pt is kept as it was)."""
    threads_before = torch.get_num_threads()
    benchmark_before = torch.backends.cudnn.benchmark
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    created = not torch.distributed.is_initialized()
    info = dist.init(cfg.device)
    if cfg.cudnn_benchmark and info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        if resume and not ckpt.exists():
            raise FileNotFoundError(f"--resume: {ckpt} does not exist")
        if not resume and ckpt.exists():
            raise FileExistsError(f"{run_dir} already holds a run (checkpoint.pt): add --resume to continue "
                                  "it, or choose another --out")
        notes: list[str] = []
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            stale = remove_stale_temp(run_dir)
            if stale:
                notes.append(f"removed {len(stale)} partial checkpoint file(s) left by an interrupted write")
        dist.barrier(info)
        files = list_images(data_dir)
        if val_dir:
            train_files, val_files = files, list_images(val_dir)
        else:
            train_files, val_files = split_holdout(files, cfg.val_count, cfg.seed)
        trainer = _make(cfg, train_files, val_files, info, notes, prior=prior, dre=dre, vgg=vgg, init=init,
                        pairs=pairs, data_dir=data_dir)
        logger = RunLogger(run_dir, info.is_main, cfg.tensorboard, console)
        notes.append(f"tensorboard: {logger.tb_note}")
        if info.is_main:
            write_run_config(run_dir, cfg, notes, {
                "data_dir": str(Path(data_dir).resolve()), "train_images": len(train_files),
                "val_images": [str(p) for p in val_files], "world_size": info.world_size,
                "device": str(info.device), "resume": resume,
                "sources": {"prior": _s(prior), "dre": _s(dre), "vgg": _s(vgg), "pairs": _s(pairs), "init": _s(init),
                            "val_dir": _s(val_dir)}})
        logger.print(f"panini train {cfg.command}: {len(train_files)} training images, {len(val_files)} for "
                     f"validation, {info.world_size} process(es) on {info.device}, run folder {run_dir}")
        for note in notes:
            logger.print(f"[yellow]note:[/] {note}")
        try:
            result = run(trainer, run_dir, cfg, info, logger, resume=resume,
                         export_name=EXPORT_NAMES[cfg.command])
        finally:
            logger.close()
        result["notes"] = notes
        if created:
            dist.barrier(info)       # every rank done before the group goes (else a peer aborts at exit)
        return result
    finally:
        torch.set_num_threads(threads_before)
        torch.backends.cudnn.benchmark = benchmark_before
        if created:
            dist.shutdown(info)


def _s(path) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _make(cfg, train_files, val_files, info, notes, *, prior, dre, vgg, pairs, data_dir, init=None):
    if cfg.command == "restore":
        from .loop import RestoreTrainer
        if pairs and cfg.lq == "auto":
            cfg.lq = "pairs"
        return RestoreTrainer(cfg, train_files, val_files, info, prior=prior, dre=dre, vgg=vgg, init=init,
                              pairs_dir=pairs, data_root=data_dir, notes=notes)
    if prior or dre or vgg or pairs or init:
        raise ValueError(f"--prior/--dre/--vgg/--pairs/--init do not apply to `panini train {cfg.command}`")
    if cfg.command == "dre":
        from .udrl import UDRLTrainer
        return UDRLTrainer(cfg, train_files, val_files, info, notes)
    from .prior import PriorTrainer
    return PriorTrainer(cfg, train_files, val_files, info, notes)


def export_checkpoint(run_dir, out=None) -> tuple[str, Path, int]:
    """Write the deliverable of RUN_DIR/checkpoint.pt. -> (command, file, step)."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT)
    command, t = state["command"], state["trainer"]
    out = Path(out) if out else run_dir / EXPORT_NAMES[command]
    if command == "restore":
        from .loop import export_state
        export_state(t["ema"], t["model_config"], t["step"], out)
    elif command == "dre":
        from .udrl import export_state
        enc = {k[len("encoder_q."):]: v for k, v in t["moco"].items() if k.startswith("encoder_q.")}
        export_state(enc, t["arch"], t["step"], out)
    elif command == "prior":
        from .prior import export_state
        export_state(t["ema"], t["D"], t["arch"], t["step"], out)
    else:
        raise ValueError(f"unknown checkpoint command {command!r}")
    return command, out, t["step"]
