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

On a GPU (`--device cuda`) each variant runs in one worker process that times every config
with CUDA events (model only: the input batch already on the device, the output left there),
at batch 1 and, for `--batches 1 sweep`, at growing batches up to the best faces/s:

    python benchmarks/forward.py --device cuda                          # mfr + sr, default CUDA configs
    python benchmarks/forward.py --device cuda --variants mfr --configs official:fp32 fast:bf16 \
        fast:bf16:compile --json out.json

CUDA configs add the modes' flags `ieee` (fp32 with TF32 off for cuDNN and cuBLAS; without it
PyTorch's defaults apply: cuDNN convolutions in TF32) and `bench` (cudnn.benchmark); `compile`
configs run in their own process at batch 1 and at the best batch of the same uncompiled config.
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
CPU_CONFIGS = ["official:fp32", "ref:fp32", "fast:fp32", "fast:fp32:tuned", "fast:bf16:tuned"]
# most wanted first: a time budget drops what comes last
CUDA_CONFIGS = ["official:fp32", "fast:fp32", "fast:bf16", "fast:fp16", "ref:bf16", "ref:fp32", "fast:fp32:ieee",
                "fast:bf16:compile"]
SWEPT = {"fast:fp32", "fast:bf16", "fast:fp16", "ref:bf16"}   # CUDA: `sweep` runs these to their best batch


def build(variant: str, random: bool = False):
    import torch

    from panini_models import checkpoints, recipe
    from panini_models.panini import PaniniNet

    keys = SHARED / "reference" / f"keys_{variant}.json"
    if random or not keys.exists():
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


def save_model(variant: str, path: Path, random: bool = False) -> str:
    """Build `variant` (recipe or random weights) and save it where the workers load it from.
    A file already at `path` with a `.weights` note beside it is reused (forward.py --weights-dir)."""
    from panini_models.checkpoints import save_weights

    note = path.with_suffix(".weights")
    if path.exists() and note.exists() and (not random or note.read_text() == "random"):
        return note.read_text()
    model, weights = build(variant, random)
    save_weights(path, model.state_dict(), "panini", json.loads(model.config.to_json()))
    note.write_text(weights)
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


# ----------------------------------------------------------------------------- CUDA
def _set_official(on: bool) -> None:
    """Swap in (or back out) the official op structure: native FIR upfirdn2d, grouped modconv."""
    from panini_models import ops, stylegan2

    if not hasattr(stylegan2, "_bench_fast_ops"):
        stylegan2._bench_fast_ops = (stylegan2.upfirdn2d, stylegan2.modulated_conv2d)
    if on:
        stylegan2.upfirdn2d = ops.upfirdn2d_ref
        stylegan2.modulated_conv2d = lambda *a, fused=None, **k: ops.modulated_conv2d_ref(*a, **k)
    else:
        stylegan2.upfirdn2d, stylegan2.modulated_conv2d = stylegan2._bench_fast_ops


def _cuda_flags(flags) -> None:
    import torch

    torch.backends.cudnn.benchmark = "bench" in flags
    ieee = "ieee" in flags               # else PyTorch's defaults: cuDNN in TF32, cuBLAS fp32 in IEEE
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = not ieee


class _Device:
    """CUDA synchronisation, events and allocator counters; `dry-cpu` stands in for them on the CPU
    (perf_counter, no memory figures) so the CUDA table's plumbing can be tried where there is no GPU."""

    def __init__(self, name: str):
        import torch

        self.torch = torch
        self.dry = name == "dry-cpu"
        self.dev = torch.device("cpu" if self.dry else name)
        if not self.dry and self.dev.index is not None:
            torch.cuda.set_device(self.dev)

    @property
    def name(self) -> str:
        return "CPU (dry run)" if self.dry else self.torch.cuda.get_device_name(self.dev)

    def sync(self) -> None:
        if not self.dry:
            self.torch.cuda.synchronize(self.dev)

    def start_peak(self) -> int:
        if self.dry:
            return 0
        self.sync()
        self.torch.cuda.reset_peak_memory_stats(self.dev)
        return self.torch.cuda.memory_allocated(self.dev)

    def peak(self) -> int:
        return 0 if self.dry else self.torch.cuda.max_memory_allocated(self.dev)

    def empty_cache(self) -> None:
        if not self.dry:
            self.torch.cuda.empty_cache()

    def time_ms(self, fn, reps: int) -> float:
        """Median ms of fn() over `reps` runs (CUDA events around each), after two warm-up runs."""
        fn()
        fn()
        times = []
        for _ in range(reps):
            if self.dry:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
                continue
            start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]


def cuda_matmul_rates(d: "_Device") -> dict[str, float]:
    """FLOP/s of a 4096^3 matmul: fp32 (IEEE), tf32, bf16, fp16 (median of 10 after warm-up)."""
    import torch

    device = d.dev
    n = 512 if d.dry else 4096
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g)
    b = torch.randn(n, n, device=device, generator=g)
    rates = {}
    for name, dtype, tf in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                            ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf
        a_, b_ = a.to(dtype), b.to(dtype)
        ms = d.time_ms(lambda: a_ @ b_, reps=3 if d.dry else 10)
        rates[name] = 2 * n ** 3 / (ms / 1e3)
    torch.backends.cuda.matmul.allow_tf32 = False
    return rates


def cuda_worker(args) -> None:
    """Time every config of args.plan for one variant on args.device; one JSON line out."""
    import copy

    import torch

    from panini_models import checkpoints, runtime

    d = _Device(args.device)
    dev = d.dev
    master = checkpoints.load_panini(args.weights_file).eval().requires_grad_(False)
    size = master.config.in_size
    out = {"device": d.name, "torch": torch.__version__, "rows": []}
    partial = open(args.partial, "a") if args.partial else None

    def keep(entry: dict) -> None:          # what a worker stopped at its time limit still gives back
        if partial:
            partial.write(json.dumps(entry) + "\n")
            partial.flush()

    if args.rates:
        out["rates"] = cuda_matmul_rates(d)
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode
        m = copy.deepcopy(master).to(dev)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            m(torch.rand(1, 3, size, size, device=dev) * 2 - 1)
        out["flops"] = counter.get_total_flops()
        del m
    keep({k: out[k] for k in ("device", "torch", "rates", "flops") if k in out})
    gen = torch.Generator(device=dev).manual_seed(0)
    x1 = torch.rand(1, 3, size, size, device=dev, generator=gen) * 2 - 1
    ref = None
    deadline = time.perf_counter() + args.budget_s
    for item in json.loads(args.plan):
        config = item["config"]
        mode, precision, *flags = config.split(":")
        if time.perf_counter() > deadline:
            out["rows"].append({"config": config, "batch": item["batches"][0], "skipped": "time budget"})
            continue
        _set_official(mode == "official")
        _cuda_flags(flags)
        t = time.perf_counter()
        try:
            model = runtime.prepare(copy.deepcopy(master), dev, precision, channels_last=mode == "fast",
                                    compile="compile" in flags)
        except ValueError as e:                      # fp16 in the CPU dry run
            out["rows"].append({"config": config, "batch": item["batches"][0], "skipped": str(e)})
            continue
        prepare_s = time.perf_counter() - t
        best = 0.0
        for batch in item["batches"]:
            if time.perf_counter() > deadline:
                break
            x = x1 if batch == 1 else torch.rand(batch, 3, size, size, device=dev, generator=gen) * 2 - 1
            row = {"config": config, "batch": batch}
            try:
                base = d.start_peak()
                t = time.perf_counter()
                y = runtime.forward(model, x, precision)
                d.sync()
                row["first_s"] = time.perf_counter() - t + (prepare_s if batch == item["batches"][0] else 0.0)
                ms_one = d.time_ms(lambda: runtime.forward(model, x, precision), reps=1)
                reps = 1 if d.dry else max(3, min(30, int(300 / max(ms_one, 1e-3))))   # ~0.3 s of timing
                ms = d.time_ms(lambda: runtime.forward(model, x, precision), reps=reps)
                row.update(ms=ms, faces_s=batch / (ms / 1e3), reps=reps, peak_mib=(d.peak() - base) / 2 ** 20)
                if batch == 1:
                    y = y.float().cpu()
                    if ref is None:
                        ref = y
                    row["diff"] = float((y - ref).abs().max())
                    row["finite"] = bool(torch.isfinite(y).all())
            except torch.cuda.OutOfMemoryError:
                row["oom"] = True
                out["rows"].append(row)
                keep({"row": row})
                break
            finally:
                del x
                y = None
                d.empty_cache()
            out["rows"].append(row)
            keep({"row": row})
            if item.get("sweep") and batch > 1:
                if row["faces_s"] < 1.05 * best and batch >= 8:
                    break                       # no longer pays: the best is behind us
            best = max(best, row["faces_s"])
        del model
        d.empty_cache()
    _set_official(False)
    print(json.dumps(out))


def _sweep_batches(max_batch: int) -> list[int]:
    b, out = 1, []
    while b <= max_batch:
        out.append(b)
        b *= 2
    return out


def cuda_main(args) -> None:
    configs = args.configs or CUDA_CONFIGS
    batches = args.batches or ["1", "sweep"]
    sweep = "sweep" in batches
    fixed = sorted({int(b) for b in batches if b != "sweep"})
    report = {"device": None, "rates": None, "variants": {}, "goals": {}}
    t_start = time.perf_counter()
    shares = args.shares or [1.0 / len(args.variants)] * len(args.variants)
    with tempfile.TemporaryDirectory() as tmp:
        for vi, variant in enumerate(args.variants):
            folder = Path(args.weights_dir) if args.weights_dir else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            weights_file = folder / f"{variant}.safetensors"
            weights = save_model(variant, weights_file, random=variant in args.random_weights)
            plain = [c for c in configs if "compile" not in c.split(":")]
            plan = [{"config": c, "batches": _sweep_batches(args.max_batch) if sweep and c in SWEPT else fixed,
                     "sweep": sweep and c in SWEPT} for c in plain]
            left = args.budget_s - (time.perf_counter() - t_start)
            if vi < len(args.variants) - 1:
                left = min(left, args.budget_s * sum(shares[:vi + 1]) - (time.perf_counter() - t_start))
            cmd = [sys.executable, __file__, "--worker", "--device", args.device, "--weights-file", str(weights_file),
                   "--plan", json.dumps(plan), "--budget-s", str(max(1.0, left - 10)), "--count-flops"]
            if vi == 0:
                cmd.append("--rates")
            r = _run_worker(cmd, timeout=max(30.0, left)) if plan else {}
            rows = r.get("rows", [])
            report["device"] = report["device"] or r.get("device")
            report["rates"] = report["rates"] or r.get("rates")
            for c in [c for c in configs if "compile" in c.split(":")]:
                left = args.budget_s - (time.perf_counter() - t_start)
                base = ":".join(x for x in c.split(":") if x != "compile")
                best = max((x for x in rows if x.get("config") == base and "faces_s" in x),
                           key=lambda x: x["faces_s"], default=None)
                cb = sorted({1, best["batch"]} if best else set(fixed))
                if left < 30:
                    rows.append({"config": c, "batch": cb[0], "skipped": "time budget"})
                    continue
                cmd = [sys.executable, __file__, "--worker", "--device", args.device, "--weights-file",
                       str(weights_file), "--plan", json.dumps([{"config": c, "batches": cb, "sweep": False}]),
                       "--budget-s", str(min(args.compile_timeout, left))]
                rc = _run_worker(cmd, timeout=min(args.compile_timeout, left))
                rows += rc.get("rows", [{"config": c, "batch": cb[0], "skipped": rc.get("error", "failed")}])
            report["variants"][variant] = {"weights": weights, "flops": r.get("flops"), "rows": rows,
                                           "error": r.get("error")}
    _print_cuda(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def _run_worker(cmd, timeout: float) -> dict:
    """The worker's JSON; after a time-out, what it had finished (its --partial lines)."""
    fd, partial = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    try:
        res = subprocess.run(cmd + ["--partial", partial], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        out = {"rows": [], "error": f"timed out after {timeout:.0f} s (rows before it kept)"}
        for line in Path(partial).read_text().splitlines():
            entry = json.loads(line)
            if "row" in entry:
                out["rows"].append(entry["row"])
            else:
                out.update(entry)
        return out
    finally:
        Path(partial).unlink(missing_ok=True)
    if res.returncode:
        print(res.stderr[-3000:], file=sys.stderr)
        return {"error": f"worker exit {res.returncode}: {(res.stderr.strip().splitlines() or [''])[-1][:200]}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _floor_rate(rates: dict, config: str) -> float | None:
    if not rates:
        return None
    _, precision, *flags = config.split(":")
    key = precision if precision != "fp32" else ("fp32" if "ieee" in flags else "tf32")
    return rates.get(key)


def _print_cuda(report: dict) -> None:
    rates = report["rates"] or {}
    print(f"device: {report['device']}; matmul 4096^3: " +
          ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in rates.items()))
    print("variant | config | batch | faces/s | ms/batch | first call s | peak MiB | x floor | vs official b1 | "
          "max|diff| b1")
    for variant, v in report["variants"].items():
        if v.get("error"):
            print(f"{variant} | worker failed: {v['error']}")
        rows = v["rows"]
        off = next((r["faces_s"] for r in rows if r.get("config") == "official:fp32" and r.get("batch") == 1
                    and "faces_s" in r), None)
        for r in rows:
            if "faces_s" not in r:
                print(f"{variant} | {r.get('config')} | {r.get('batch')} | "
                      f"{'out of memory' if r.get('oom') else r.get('skipped', '-')}")
                continue
            rate = _floor_rate(rates, r["config"])
            floor = v["flops"] * r["batch"] / rate if v.get("flops") and rate else None
            speed = r["faces_s"] / off if off else float("nan")
            print(f"{variant} | {r['config']} | {r['batch']} | {r['faces_s']:.1f} | {r['ms']:.2f} | "
                  f"{r['first_s']:.1f} | {r['peak_mib']:.0f} | "
                  f"{(r['ms'] / 1e3 / floor) if floor else float('nan'):.1f} | {speed:.2f} | "
                  f"{r.get('diff', float('nan')):.1e}")
        if v.get("flops"):
            print(f"{variant}: {v['flops'] / 1e9:.1f} GFLOP per face ({v['weights']} weights)")
    mfr = report["variants"].get("mfr")
    if mfr:
        rows = [r for r in mfr["rows"] if "faces_s" in r]
        pick = lambda c, b=None: max((r["faces_s"] for r in rows if r["config"] == c  # noqa: E731
                                      and (b is None or r["batch"] == b)), default=None)
        off, ours = pick("official:fp32", 1), pick("fast:fp32", 1)
        bf16 = max([x for x in (pick("fast:bf16"), pick("fast:bf16:compile")) if x] or [None])
        goals = report["goals"]
        goals["mfr_fp32_b1_speedup_vs_official"] = (ours / off) if off and ours else None
        goals["mfr_bf16_best_faces_s"] = bf16
        print(f"goals (MFR): fp32 batch 1 ours/official = "
              f"{goals['mfr_fp32_b1_speedup_vs_official'] or float('nan'):.2f} (goal >= 5); "
              f"bf16 best batch {bf16 or float('nan'):.1f} faces/s (goal >= 300)")
    print("faces/s: model only (input on the device, output left there), CUDA events, median. fp32 rows use "
          "PyTorch's defaults (cuDNN convolutions in TF32) unless `ieee`. x floor = time / (FLOPs / the "
          "matmul rate of that precision: tf32 for default fp32). max|diff| against the first config's "
          "batch-1 output. peak = allocator peak above the model's weights.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["mfr", "sr"])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: the CUDA table (see above)")
    p.add_argument("--batches", nargs="+", default=None,
                   help="batch sizes (default 1); on CUDA also `sweep` (default: 1 sweep)")
    p.add_argument("--configs", nargs="+", default=None,
                   help="mode:precision[:tuned][:compile]; mode official (the official op structure: native FIR, "
                        "grouped modconv, NCHW), ref (our ops, NCHW) or fast (our ops, channels_last); "
                        "tuned: with the CLI's glibc malloc settings; compile: torch.compile. "
                        f"Default on CPU: {' '.join(CPU_CONFIGS)}; on CUDA: {' '.join(CUDA_CONFIGS)}")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--max-batch", type=int, default=128, help="CUDA sweep: largest batch tried")
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="CUDA: seconds for the whole table; configs that would start later are skipped")
    p.add_argument("--compile-timeout", type=float, default=150.0, help="CUDA: seconds for one compile config")
    p.add_argument("--weights-dir", default=None, help="CUDA: keep (and reuse) the weight files here")
    p.add_argument("--random-weights", nargs="*", default=[], help="CUDA: these variants with random weights "
                   "(quicker to make than the recipe; the same speed)")
    p.add_argument("--shares", nargs="*", type=float, default=None,
                   help="CUDA: share of the budget per variant (default: even; the last takes what is left)")
    p.add_argument("--plan", help=argparse.SUPPRESS)
    p.add_argument("--partial", help=argparse.SUPPRESS)
    p.add_argument("--rates", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help="top ops of the last config")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant"), p.add_argument("--batch", type=int), p.add_argument("--mode")
    p.add_argument("--precision"), p.add_argument("--ref-file"), p.add_argument("--write-ref", action="store_true")
    p.add_argument("--weights-file"), p.add_argument("--compile", action="store_true")
    p.add_argument("--count-flops", action="store_true")
    args = p.parse_args()
    if args.device != "cpu":
        if args.worker:
            return cuda_worker(args)
        return cuda_main(args)
    args.batches = [int(b) for b in (args.batches or [1])]
    args.configs = args.configs or CPU_CONFIGS
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
