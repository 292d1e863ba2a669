"""Forward speed and memory of Panini-Net on this machine, printed as one table.

Each configuration runs in its own process (so peak RSS is its own), all in one
run so the ratios are comparable on a noisy machine. Weights: the reference
recipe from ../shared/reference when present (activations as in the official
model), else random.

    python benchmarks/forward.py                       # mfr + sr, batch 1, fp32 ref/fast + bf16
    python benchmarks/forward.py --variants mfr --batches 1 4 --repeats 3
    python benchmarks/forward.py --variants mfr --configs fast:fp32:tuned --profile

A config is mode:precision[:tuned][:compile]; `tuned` runs the worker with the glibc
malloc settings the `panini` CLI applies (panini_cli/malloc.py), otherwise glibc's
defaults; `compile` wraps the model in torch.compile (the first-call column shows what
compiling costs).
--profile adds a table of the top ops by share of self CPU time (last config).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from panini_cli.malloc import TUNED   # no torch import

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PANINI_SHARED", REPO.parent / "shared"))
OFFICIAL_SECONDS = {"mfr": 16.0, "sr": 16.2}      # ../shared/reference/README.md, batch 1, fp32, 2 threads


def build(variant: str):
    import torch

    from panini_models import checkpoints, recipe
    from panini_models.panini import PaniniNet

    keys = SHARED / "reference" / f"keys_{variant}.json"
    if not keys.exists():
        torch.manual_seed(0)
        return PaniniNet(variant), "random"
    entries = [[k[len("generator."):], s, t] for k, s, t in json.loads(keys.read_text())["state_dict"]
               if k.startswith("generator.")]
    arrays = recipe.generate(entries, variant)
    sd = {"generator." + k: torch.from_numpy(v) for k, v in arrays.items()}
    imported = checkpoints.import_panini_official({"state_dict": sd}, keys)
    del arrays, sd
    return checkpoints.build(imported.kind, imported.config, imported.state_dict), "recipe"


def worker(args) -> None:
    import numpy as np
    import torch

    from panini_models import runtime

    torch.set_num_threads(args.threads)
    from panini_models import checkpoints, memory
    model = checkpoints.load_panini(args.weights_file)        # as the CLI loads a model
    loaded = memory.rss_bytes() / 2**20
    size = model.config.in_size
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, size, size, generator=gen) * 2 - 1
    flops = 0
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode
        model.eval().requires_grad_(False)   # eval: a train-mode pass would move the BN running stats;
        # requires_grad off: the counter's module tracker trips on no_grad leaves
        with FlopCounterMode(display=False) as counter:
            model(x[:1])
        flops = counter.get_total_flops()
    if args.mode == "official":
        # The official code's op structure: the native one-channel FIR upfirdn2d and the
        # grouped modulated conv, NCHW (same algorithms as mmcv's CPU reference paths).
        from panini_models import ops, stylegan2
        stylegan2.upfirdn2d = ops.upfirdn2d_ref
        stylegan2.modulated_conv2d = lambda *a, fused=None, **k: ops.modulated_conv2d_ref(*a, **k)
    model = runtime.prepare(model, "cpu", args.precision, channels_last=args.mode == "fast",
                            compile=args.compile)
    t = time.perf_counter()
    runtime.forward(model, x, args.precision)                      # warm-up (and compile)
    first = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = runtime.forward(model, x, args.precision)
        times.append(time.perf_counter() - t)
    ref = Path(args.ref_file)
    if args.write_ref:
        np.save(ref, out.numpy())
        diff = 0.0
    else:
        diff = float(np.abs(out.numpy() - np.load(ref)).max()) if ref.exists() else float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024          # MiB
    ops = profile(model, x, args.precision) if args.profile else []
    print(json.dumps({"times": times, "peak_mib": peak, "loaded_mib": loaded, "first": first, "flops": flops,
                      "diff": diff, "ops": ops}))


def save_model(variant: str, path: Path) -> str:
    """Build `variant` (recipe or random weights) and save it where the workers load it from."""
    from panini_models.checkpoints import save_weights

    model, weights = build(variant)
    save_weights(path, model.state_dict(), "panini", json.loads(model.config.to_json()))
    return weights


def profile(model, x, precision: str, top: int = 15) -> list:
    """Top ops of one forward by self CPU time: [name, share, ms, calls]."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from panini_models import runtime
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        runtime.forward(model, x, precision)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [[e.key, e.self_cpu_time_total / total, e.self_cpu_time_total / 1e3, e.count] for e in events[:top]]


def matmul_rates(threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a_, b_ = a.to(dtype), b.to(dtype)
        a_ @ b_
        best = min(_time(lambda: a_ @ b_) for _ in range(5))
        rates[name] = 2 * n ** 3 / best
    return rates


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["mfr", "sr"])
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--configs", nargs="+",
                   default=["official:fp32", "ref:fp32", "fast:fp32", "fast:fp32:tuned", "fast:bf16:tuned"],
                   help="mode:precision[:tuned][:compile]; mode official (the official op structure: native FIR, "
                        "grouped modconv, NCHW), ref (our ops, NCHW) or fast (our ops, channels_last); "
                        "tuned: with the CLI's glibc malloc settings; compile: torch.compile")
    p.add_argument("--profile", action="store_true", help="top ops of the last config")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant"), p.add_argument("--batch", type=int), p.add_argument("--mode")
    p.add_argument("--precision"), p.add_argument("--ref-file"), p.add_argument("--write-ref", action="store_true")
    p.add_argument("--weights-file"), p.add_argument("--compile", action="store_true")
    p.add_argument("--count-flops", action="store_true")
    args = p.parse_args()
    if args.worker:
        return worker(args)

    rates = matmul_rates(args.threads)
    print(f"matmul 2048^3 at {args.threads} threads: fp32 {rates['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {rates['bf16'] / 1e9:.0f} GFLOP/s")
    rows, ops = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            weights_file = Path(tmp) / f"{variant}.safetensors"
            weights = save_model(variant, weights_file)
            for batch in args.batches:
                ref_file = Path(tmp) / f"{variant}_{batch}.npy"
                flops = 0
                for i, config in enumerate(args.configs):
                    mode, precision, *flags = config.split(":")
                    cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--batch", str(batch),
                           "--mode", mode, "--precision", precision, "--ref-file", str(ref_file),
                           "--weights-file", str(weights_file),
                           "--repeats", str(args.repeats), "--threads", str(args.threads)]
                    if i == 0:
                        cmd += ["--write-ref", "--count-flops"]
                    if args.profile and i == len(args.configs) - 1:
                        cmd += ["--profile"]
                    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
                    env.update(TUNED if "tuned" in flags else {})
                    if "compile" in flags:
                        cmd += ["--compile"]
                    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if res.returncode:
                        print(res.stderr[-2000:], file=sys.stderr)
                        raise SystemExit(f"worker failed: {config}")
                    r = json.loads(res.stdout.strip().splitlines()[-1])
                    flops = flops or r["flops"]
                    ops = r["ops"] or ops
                    sec = sorted(r["times"])[len(r["times"]) // 2] / batch
                    floor = flops / rates["bf16" if precision == "bf16" else "fp32"]
                    rows.append((variant, batch, config, sec, r["first"], r["loaded_mib"], r["peak_mib"],
                                 flops / 1e9, sec / floor if floor else float("nan"),
                                 r["diff"], weights))
    head = ("variant", "batch", "config", "s/img", "first call s", "loaded MiB", "peak MiB", "GFLOP/img", "x floor",
            "speed-up vs official", "max|diff|", "weights")
    print(" | ".join(head))
    base = {}
    for r in rows:
        if r[2] == "official:fp32":
            base[(r[0], r[1])] = r[3]
        speedup = base.get((r[0], r[1]), float("nan")) / r[3]
        print(f"{r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.0f} | {r[6]:.0f} | {r[7]:.1f} | "
              f"{r[8]:.1f} | {speedup:.2f} | {r[9]:.1e} | {r[10]}")
    print("loaded = resident MiB once the model is loaded from its safetensors file (as the CLI loads it); "
          "peak = the process's peak RSS after the forwards.")
    print("x floor = time / (FLOPs / measured matmul rate of that dtype). speed-up = official-structure "
          "time / this time, same run. max|diff| = against the first config's fp32 output. For context, "
          f"the reference README measured the official code at {OFFICIAL_SECONDS} s on its machine.")
    if ops:
        print(f"\ntop ops, {args.configs[-1]}, batch {args.batches[-1]}, one forward (self CPU time):")
        print("op | share | ms | calls")
        for name, share, ms, calls in ops:
            print(f"{name} | {share:.1%} | {ms:.0f} | {calls}")


if __name__ == "__main__":
    main()
