"""The driver every trainer shares: the step loop, signals, logging, checkpoints, NaN stop.

A trainer (udrl.UDRLTrainer, loop.RestoreTrainer, prior.PriorTrainer) knows how to do
one optimiser step, validate, export, and give/take its state. This module decides
*when*: checkpoints every `ckpt_every` steps and at the end, a save-then-exit on
SIGTERM/SIGINT (agreed by all ranks so none is left waiting in a collective), and a
clean stop with the last good checkpoint untouched when a loss is not finite.
"""
from __future__ import annotations

import inspect
import json
import math
import signal
import threading
import time
from pathlib import Path

import torch
from rich.console import Console

from . import dist
from .state import CHECKPOINT, NonFiniteLoss, load_checkpoint, rng_state, save_checkpoint, set_rng_state

LOG = "log.jsonl"
FORMAT = "panini-train"


class CosineSchedule:
    """lr(it) = min + 0.5 (base - min) (1 + cos(pi * it / total)), set on every param group.

    Closed form (no recurrence), so a resumed run gets bit-identical learning rates."""

    def __init__(self, optimizers, total: int, min_lr: float = 0.0):
        self.optimizers = list(optimizers)
        self.base = [[g["lr"] for g in o.param_groups] for o in self.optimizers]
        self.total, self.min_lr, self.it = max(1, total), min_lr, 0
        self._apply()

    def lr(self, base: float) -> float:
        t = min(self.it, self.total) / self.total
        return self.min_lr + 0.5 * (base - self.min_lr) * (1 + math.cos(math.pi * t))

    def _apply(self) -> None:
        for opt, bases in zip(self.optimizers, self.base):
            for group, base in zip(opt.param_groups, bases):
                group["lr"] = self.lr(base)

    def step(self) -> None:
        self.it += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"it": self.it, "base": self.base, "total": self.total, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict) -> None:
        self.it, self.base = state["it"], state["base"]
        self.total, self.min_lr = state["total"], state["min_lr"]
        self._apply()


class RunLogger:
    """Rank 0 only: rich console lines, RUN_DIR/log.jsonl, TensorBoard when it imports."""

    def __init__(self, run_dir, enabled: bool, tensorboard: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / LOG
        self.console = console or Console(highlight=False)
        self.tb = None
        self.tb_note = "off"
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
                self.tb_note = f"on ({Path(run_dir) / 'tb'})"
            except ImportError:
                self.tb_note = "not installed (pip install tensorboard to get it)"

    def trim(self, last_step: int) -> None:
        """Drop records after `last_step` (steps a killed run did not checkpoint get redone)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= last_step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def record(self, kind: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        rec = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def print(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, soft_wrap=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class StopSignals:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit. Second: abort at once."""

    def __init__(self, logger: RunLogger):
        self.requested: str | None = None
        self.logger = logger
        self._old: dict = {}

    def _handle(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            raise KeyboardInterrupt(f"second {name}: aborting without a checkpoint")
        self.requested = name
        self.logger.print(f"[yellow]{name}[/]: saving a checkpoint after this step, then stopping "
                          "(send it again to abort without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _fmt(values: dict) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


LATEST = "latest.safetensors"        # the periodic float16 export (export_every_s)
FIT_AT = (0.1, 0.3, 0.6, 0.85)       # shares of max_seconds at which the schedule is re-fitted


def export_weights(trainer, path, half: bool = False) -> Path:
    """trainer.export(path), with float tensors stored as float16 when `half`."""
    path = Path(path)
    if not half:
        trainer.export(path)
    elif "half" in inspect.signature(trainer.export).parameters:
        trainer.export(path, half=True)
    else:
        from ..checkpoints import read_weights, save_weights
        trainer.export(path)
        kind, config, state, meta = read_weights(path)
        extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "kind", "config")}
        extra["stored_dtype"] = "float16 (loaded as float32)"
        save_weights(path, {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()},
                     kind, config, extra)
    return path


class TimeBudget:
    """`max_seconds` of wall time for the step loop: says when it is spent, and re-fits the
    cosine schedule (its total) to the steps the measured rate leaves room for, at FIT_AT
    shares of the budget. The rate is measured from the 4th step of this start on, so the
    first steps (allocator, cuDNN autotuning, loader start) do not count."""

    def __init__(self, cfg, start_step: int):
        self.limit = float(cfg.max_seconds or 0)
        self.export_every = float(cfg.export_every_s or 0)
        self.t0 = self.last_export = time.monotonic()
        self.start_step = start_step
        self.mark: tuple[int, float] | None = None
        self.fits = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def spent(self) -> bool:
        return self.limit > 0 and self.elapsed() >= self.limit

    def export_due(self) -> bool:
        return self.export_every > 0 and time.monotonic() - self.last_export >= self.export_every

    def fit_due(self, step: int) -> bool:
        """True when the schedule should be re-fitted now (the next share of FIT_AT is reached)."""
        if self.limit <= 0:
            return False
        if self.mark is None:
            if step - self.start_step >= 3:
                self.mark = (step, time.monotonic())
            return False
        return (self.fits < len(FIT_AT) and step > self.mark[0]
                and self.elapsed() >= FIT_AT[self.fits] * self.limit)

    def refit(self, step: int, cap: int) -> int:
        """-> the total step count that the rate since the mark fits into the budget (<= cap)."""
        self.fits += 1
        now = time.monotonic()
        if self.mark is None or step <= self.mark[0]:
            return cap
        rate = (step - self.mark[0]) / max(now - self.mark[1], 1e-9)
        left = max(0.0, self.limit - (now - self.t0))
        return int(max(step + 1, min(cap, step + int(rate * left))))


def run(trainer, run_dir, cfg, info: dist.DistInfo, logger: RunLogger, resume: bool = False,
        export_name: str = "final.safetensors") -> dict:
    """Train until `cfg.total_steps` (or a stop signal, or `cfg.max_seconds` of wall time).
    -> {"status", "step", "export"?, "stopped_by"?}.

    With max_seconds the cosine schedule's length is re-fitted to the measured step rate
    (logged as kind "schedule"), and a spent budget ends the run like its last step: final
    checkpoint and export, status "done", stopped_by "max_seconds". With export_every_s the
    weights are also written, in float16, to EXPORT_DIR/latest.safetensors that often, and
    to EXPORT_DIR/final.safetensors at the end (latest is then removed): a run killed from
    outside still leaves weights no older than export_every_s.

    Raises NonFiniteLoss (after logging it) when a loss is NaN/inf: nothing is saved at
    that step, so RUN_DIR/checkpoint.pt is still the last good one."""
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    if resume:
        state = load_checkpoint(ckpt)
        if state.get("format") != FORMAT or state.get("command") != cfg.command:
            raise ValueError(f"{ckpt} is not a `panini train {cfg.command}` checkpoint")
        trainer.load_state_dict(state["trainer"])
        set_rng_state(state["rng"])
        logger.trim(trainer.step)
        logger.print(f"resumed {ckpt} at step {trainer.step}")
    saved_step = trainer.step if resume else None

    def save(reason: str) -> None:
        nonlocal saved_step
        if info.is_main:
            save_checkpoint(ckpt, {"format": FORMAT, "command": cfg.command, "step": trainer.step,
                                   "trainer": trainer.state_dict(), "rng": rng_state()})
            logger.record("checkpoint", trainer.step, {"reason": reason})
        saved_step = trainer.step
        dist.barrier(info)

    status, stopped_by = "done", None
    total = cfg.total_steps
    sched = getattr(trainer, "sched", None)
    budget = TimeBudget(cfg, trainer.step)
    export_dir = Path(cfg.export_dir) if cfg.export_dir else run_dir
    latest = export_dir / LATEST

    def periodic_export() -> None:
        budget.last_export = time.monotonic()
        if info.is_main:
            export_weights(trainer, latest, half=True)
            logger.record("export", trainer.step, {"file": str(latest), "elapsed_s": round(budget.elapsed(), 1)})
        dist.barrier(info)

    with StopSignals(logger) as stop:
        while trainer.step < total:
            if cfg.stop_at and trainer.step >= cfg.stop_at:       # end of a stage (before any extra step)
                if saved_step != trainer.step:
                    save("stop_at")
                status = "stopped (stop_at)"
                break
            t0 = time.perf_counter()
            try:
                values = trainer.train_step()
            except NonFiniteLoss as e:
                where = (f"the last good checkpoint is {ckpt} (step {saved_step})" if saved_step is not None
                         else "no checkpoint had been written yet")
                msg = (f"{e}; stopped without saving, {where}. Lower the learning rates (--set lr_g=...) "
                       "or check the data, then continue with --resume")
                logger.record("error", trainer.step + 1, {"message": msg})
                raise NonFiniteLoss(msg) from None
            step = trainer.step
            values["step_time"] = time.perf_counter() - t0
            values["samples_per_s"] = trainer.samples_per_step / values["step_time"]
            values["lr"] = trainer.current_lr()
            stopping = dist.any_flag(stop.requested is not None, info)
            if budget.limit > 0 and dist.any_flag(budget.fit_due(step), info):
                new_total = budget.refit(step, cfg.total_steps)
                if info.distributed:        # every rank takes the same total
                    new_total = int(round(float(dist.mean_values(
                        torch.tensor([float(new_total)], device=info.device), info)[0])))
                if isinstance(sched, CosineSchedule):
                    sched.total = max(1, new_total)
                logger.record("schedule", step, {"total_steps": new_total, "elapsed_s": round(budget.elapsed(), 1)})
                logger.print(f"time budget: {budget.elapsed():.0f} of {budget.limit:.0f} s at step {step}; "
                             f"the schedule now ends at step {new_total}")
                total = max(step, new_total)
            if budget.limit > 0 and step < total and dist.any_flag(budget.spent(), info):
                total, stopped_by = step, "max_seconds"
                logger.print(f"time budget of {budget.limit:.0f} s spent at step {step}: finishing")
            last = step == total
            if step % max(1, cfg.log_every) == 0 or step == 1 or last or stopping:
                logger.record("train", step, values)
                logger.print(f"step {step}/{total} {_fmt(values)}")
            if cfg.val_every and (step % cfg.val_every == 0 or last) and info.is_main:
                val = trainer.validate(run_dir)
                if val:
                    logger.record("val", step, val)
                    logger.print(f"[cyan]val[/] step {step} {_fmt(val)}")
            if step % max(1, cfg.ckpt_every) == 0 or last or stopping:
                save("stop" if stopping and not last else "periodic" if not last else "final")
            if stopping and not last:
                status = f"stopped ({stop.requested})"
                break
            if not last and budget.export_every > 0 and dist.any_flag(budget.export_due(), info):
                periodic_export()
    result = {"status": status, "step": trainer.step}
    if stopped_by:
        result["stopped_by"] = stopped_by
    if status == "done" and info.is_main:
        out = run_dir / export_name
        trainer.export(out)
        result["export"] = str(out)
        logger.record("export", trainer.step, {"file": str(out)})
        logger.print(f"exported {out}")
        if cfg.export_every_s:
            half = export_weights(trainer, export_dir / export_name, half=True) if export_dir != run_dir else \
                export_weights(trainer, run_dir / f"{Path(export_name).stem}_fp16.safetensors", half=True)
            latest.unlink(missing_ok=True)
            result["export_half"] = str(half)
            logger.record("export", trainer.step, {"file": str(half), "dtype": "float16"})
            logger.print(f"exported {half} (float16)")
    elif cfg.export_every_s:
        periodic_export()            # a stop signal: the latest weights, in float16, where they are expected
    dist.barrier(info)
    return result


def device_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
