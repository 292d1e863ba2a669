"""The memory one face costs in a forward, and the batch size that fits what is free.

Batch size is the only knob that moves a forward's memory a lot: activations grow
linearly with it while the weights do not (benchmarks/forward.py prints peak RSS at
batch 1 and 4). So a run measures the cost of one face once, with a batch-1 forward
on the real device, and caps the batch at what the free memory holds with a margin.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch

#: share of the free memory a batch may use (the rest: decode/align queues, writers, other programs)
USABLE_FRACTION = 0.6


@dataclass
class MemoryPlan:
    batch: int                 # the batch size to use
    requested: int
    per_face: int              # bytes of working memory one face adds to a forward
    available: int             # bytes free on the device when measured

    @property
    def reduced(self) -> bool:
        return self.batch < self.requested

    def describe(self) -> str:
        return (f"~{self.per_face / 2**20:.0f} MiB per face in a forward, {self.available / 2**30:.1f} GiB free: "
                f"batch {self.batch}" + (f" (asked for {self.requested})" if self.reduced else ""))


def available_bytes(device: torch.device | str) -> int:
    """Free memory on the device: CUDA's free bytes, or the OS's MemAvailable on the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_bytes(fn, device: torch.device | str) -> int:
    """Run fn() and return the peak memory it used above what was in use before it.

    CUDA: the allocator's peak counter (exact). CPU: the process's resident size,
    sampled every millisecond while fn runs (torch ops release the GIL), so a short
    spike can be missed by ~1 ms of growth, and memory the process freed earlier but
    kept is reused unseen: an estimate, not a bound, best taken before other big work
    (the CLI measures right after loading the model)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return max(0, torch.cuda.max_memory_allocated(dev) - before)
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(0, max(peak[0], rss_bytes()) - before)


def fit_batch(requested: int, per_face: int, available: int, fraction: float = USABLE_FRACTION) -> int:
    """The largest batch <= requested whose faces fit in fraction x available (at least 1)."""
    if per_face <= 0:
        return max(1, requested)
    return max(1, min(requested, int(available * fraction // per_face)))


def plan_batch(restorer, requested: int) -> MemoryPlan:
    """Measure one face's cost with a batch-1 forward of `restorer` and fit `requested` to it."""
    import numpy as np

    crop = np.zeros((restorer.in_size, restorer.in_size, 3), np.uint8)
    per_face = peak_extra_bytes(lambda: restorer([crop]), restorer.device)
    available = available_bytes(restorer.device)
    return MemoryPlan(fit_batch(requested, per_face, available), requested, per_face, available)
