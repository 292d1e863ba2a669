"""`panini train dre | restore | prior | export`: the paper's training, from a laptop to torchrun.

Every run lives in one folder (--out): config.json (resolved config, notes on anything
substituted or missing), checkpoint.pt (atomic, every --set ckpt_every=N steps and on
SIGTERM/Ctrl-C), log.jsonl, samples/, and the exported weights at the end. Multi-GPU:
    torchrun --nproc_per_node 8 -m panini_cli train restore DATA --task mfr --out RUN ...
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..console import console, fail

app = typer.Typer(help="Train Panini-Net: the DRE (UDRL), restoration fine-tuning, a small StyleGAN2 prior.",
                  no_args_is_help=True)

SET_HELP = "Config override key=value (repeatable); dict fields take field.sub=value, e.g. model.channel_max=64."
EXIT_NONFINITE = 3
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def _config(command: str, out: Path, config: Optional[Path], resume: bool, shortcuts: dict,
            sets: List[str]):
    """Defaults <- --config (or, on --resume, the run's saved config) <- options <- --set."""
    from panini_models.training.state import CONFIG, load_config

    saved = out / CONFIG
    base = config or (saved if resume and saved.exists() else None)
    overrides = [f"{k}={v}" for k, v in shortcuts.items() if v is not None] + list(sets or [])
    try:
        cfg = load_config(command, base, overrides)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        fail(str(e))
    if cfg.command != command:
        fail(f"{base} is a `train {cfg.command}` config, not `train {command}`")
    return cfg


def _saved_sources(out: Path, resume: bool) -> dict:
    """On --resume, the files the run started with (so the VGG term and architecture persist)."""
    from panini_models.training.state import CONFIG

    path = out / CONFIG
    if resume and path.exists():
        return json.loads(path.read_text()).get("sources", {}) or {}
    return {}


def _run(cfg, data_dir: Path, out: Path, resume: bool, **sources) -> None:
    from panini_models.checkpoints import CheckpointError
    from panini_models.training.api import start
    from panini_models.training.state import NonFiniteLoss

    saved = _saved_sources(out, resume)
    sources = {k: (v if v is not None else saved.get(k)) for k, v in sources.items()}
    try:
        result = start(cfg, data_dir, out, resume=resume, console=console, **sources)
    except NonFiniteLoss as e:
        fail(str(e), EXIT_NONFINITE)
    except (ValueError, OSError, CheckpointError) as e:
        fail(str(e))
    if result["status"] == "stopped (stop_at)":
        console.print(f"stopped at step {result['step']} (stop_at); continue with --resume and --set stop_at=0 "
                      "(plus any settings the next stage changes)")
        return
    if result["status"] != "done":
        console.print(f"{result['status']} at step {result['step']}; continue with the same command and --resume")
        raise typer.Exit(EXIT_SIGNAL.get(result["status"].split("(")[-1].rstrip(")"), 1))
    if "export" in result:
        console.print(f"done: {result['step']} steps; weights in {result['export']}")


def _common(steps, batch_size, device, workers, seed) -> dict:
    return {"total_steps": steps, "batch_size": batch_size, "device": device, "num_workers": workers,
            "seed": seed}


DataArg = typer.Argument(..., help="Folder of HQ face images (searched recursively).", exists=True,
                         file_okay=False)
OutOpt = typer.Option(..., "--out", "-o", help="Run folder (config, checkpoints, logs, weights).")
ConfigOpt = typer.Option(None, "--config", "-c", help="JSON or TOML config file.")
SetOpt = typer.Option(None, "--set", "-s", help=SET_HELP)
ResumeOpt = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint.")
StepsOpt = typer.Option(None, "--steps", help="Total optimiser steps (total_steps).")
BatchOpt = typer.Option(None, "--batch-size", "-b", help="Batch per process and micro-batch.")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu or cuda.")
WorkersOpt = typer.Option(None, "--workers", help="Data-loader processes per training process.")
SeedOpt = typer.Option(None, "--seed")


@app.command("dre")
def dre(data_dir: Path = DataArg, out: Path = OutOpt, config: Optional[Path] = ConfigOpt,
        sets: Optional[List[str]] = SetOpt, resume: bool = ResumeOpt, steps: Optional[int] = StepsOpt,
        batch_size: Optional[int] = BatchOpt, device: Optional[str] = DeviceOpt,
        workers: Optional[int] = WorkersOpt, seed: Optional[int] = SeedOpt,
        preset: Optional[str] = typer.Option(None, "--preset", help="DRE architecture and sizes of this "
                                                                     "Panini preset: mfr (default), sr, small.")) -> None:
    """UDRL: MoCo pre-training of the degradation encoder -> OUT/dre.safetensors (kind dre)."""
    cfg = _config("dre", out, config, resume,
                  {**_common(steps, batch_size, device, workers, seed),
                   "preset": preset}, sets)
    _run(cfg, data_dir, out, resume)


@app.command("restore")
def restore(data_dir: Path = DataArg, out: Path = OutOpt, config: Optional[Path] = ConfigOpt,
            sets: Optional[List[str]] = SetOpt, resume: bool = ResumeOpt, steps: Optional[int] = StepsOpt,
            batch_size: Optional[int] = BatchOpt, device: Optional[str] = DeviceOpt,
            workers: Optional[int] = WorkersOpt, seed: Optional[int] = SeedOpt,
            task: Optional[str] = typer.Option(None, "--task", help="mfr (512->1024, Eq. 10), sr (64->1024, "
                                                                    "bilinear x16) or small (64->128, Eq. 10)."),
            dre_file: Optional[Path] = typer.Option(None, "--dre", help="DRE weights: ours (kind dre) or MoCo .pth.tar."),
            prior: Optional[Path] = typer.Option(None, "--prior", help="StyleGAN2 file (ours, mmgen or rosinality); "
                                                                      "its discriminator is used too."),
            vgg: Optional[Path] = typer.Option(None, "--vgg", help="VGG16 ImageNet weights (torchvision layout) "
                                                                  "for the perceptual loss."),
            pairs: Optional[Path] = typer.Option(None, "--pairs", help="Folder of LQ images matching DATA_DIR by "
                                                                      "relative path (instead of on-the-fly LQ)."),
            val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="HQ validation faces (default: hold "
                                                                          "out val_count faces of DATA_DIR)."),
            init: Optional[Path] = typer.Option(None, "--init", help="Start from this Panini-Net (ours or an "
                                                                     "official file): fine-tune it on DATA_DIR."),
            ) -> None:
    """Fine-tune Panini-Net (frozen DRE, StyleGAN2 prior + discriminator) -> OUT/final.safetensors."""
    cfg = _config("restore", out, config, resume,
                  {**_common(steps, batch_size, device, workers, seed),
                   "task": task}, sets)
    _run(cfg, data_dir, out, resume, prior=prior, dre=dre_file, vgg=vgg, pairs=pairs, val_dir=val_dir, init=init)


@app.command("prior")
def prior(data_dir: Path = DataArg, out: Path = OutOpt, config: Optional[Path] = ConfigOpt,
          sets: Optional[List[str]] = SetOpt, resume: bool = ResumeOpt, steps: Optional[int] = StepsOpt,
          batch_size: Optional[int] = BatchOpt, device: Optional[str] = DeviceOpt,
          workers: Optional[int] = WorkersOpt, seed: Optional[int] = SeedOpt,
          size: Optional[int] = typer.Option(None, "--size", help="Image size (power of two, 64..1024).")) -> None:
    """Pre-train a small StyleGAN2 (non-saturating loss + R1) -> OUT/prior.safetensors for --prior."""
    cfg = _config("prior", out, config, resume,
                  {**_common(steps, batch_size, device, workers, seed),
                   "size": size}, sets)
    _run(cfg, data_dir, out, resume)


@app.command("export")
def export(run_dir: Path = typer.Argument(..., help="A run folder (holding checkpoint.pt)."),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="Weight file (default: in RUN_DIR).")) -> None:
    """Write the weights of a run's latest checkpoint (e.g. while it still trains elsewhere)."""
    from panini_models.training.api import export_checkpoint

    try:
        command, path, step = export_checkpoint(run_dir, out)
    except (OSError, ValueError, KeyError) as e:
        fail(f"{run_dir}: {e}")
    console.print(f"exported the {command} run at step {step} -> {path}")
