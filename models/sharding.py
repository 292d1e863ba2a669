"""Spreading a list of work items over devices and machines.

Two levels, usable together:
- ranks: under torchrun (RANK / WORLD_SIZE set) each process takes the items
  i with i % WORLD_SIZE == RANK, so a cluster covers one big list with no other
  tool; `all_reduce_counts` sums the per-rank tallies (gloo on CPU, NCCL on GPUs).
- workers: inside one process, one worker process per device, each pulling the
  next item from a shared queue, so a fast GPU is never held up by a slow one.
Both are tested on CPU (several CPU workers, the gloo backend).
"""
from __future__ import annotations

import os
import queue as queue_mod
import traceback
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) from torchrun's environment, else (0, 1)."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ValueError("RANK and WORLD_SIZE must be integers") from None
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return rank, world


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's share: every world-th item starting at rank (order kept)."""
    return list(items[rank::world])


def all_reduce_counts(counts: dict[str, float]) -> dict[str, float]:
    """Sum numeric tallies over all ranks (a no-op without torch.distributed set up)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return counts
    keys = sorted(counts)
    t = torch.tensor([float(counts[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(keys, t.cpu().tolist()))


def close_distributed() -> None:
    """Leave the process group before exit: left to interpreter shutdown, gloo's threads can
    still be running when their owner is destroyed, and the process aborts ("terminate
    called without an active exception", exit -6) after its work is done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def init_distributed() -> bool:
    """Join the torchrun process group if MASTER_ADDR is set (gloo on CPU, NCCL with CUDA)."""
    import torch
    import torch.distributed as dist

    rank, world = rank_and_world()
    if world == 1 or "MASTER_ADDR" not in os.environ or dist.is_initialized():
        return dist.is_available() and dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, rank=rank, world_size=world)
    return True


_DONE = "__panini_worker_done__"


def _worker_main(fn, device, args, jobs, results) -> None:
    def pull():
        while True:
            item = jobs.get()
            if item is None:
                return
            yield item
    try:
        for out in fn(device, args, pull()):
            results.put(("ok", out))
    except BaseException:                 # noqa: BLE001 - reported to the parent, which raises
        results.put(("error", f"worker on {device}: {traceback.format_exc(limit=3).strip().splitlines()[-1]}"))
    finally:
        results.put((_DONE, device))


def run_workers(fn: Callable[[str, Any, Iterator], Iterable], devices: Sequence[str], args: Any,
                items: Iterable) -> Iterator:
    """Run fn(device, args, item_iterator) in one process per device over a shared queue.

    fn must be a module-level function (it is pickled into spawned processes) and
    yield picklable results, which are yielded here as they arrive. With a single
    device it runs in this process. A worker that fails raises RuntimeError here
    after the others finish.
    """
    if len(devices) == 1:
        yield from fn(devices[0], args, iter(items))
        return
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    jobs, results = ctx.Queue(), ctx.Queue()
    for item in items:
        jobs.put(item)
    for _ in devices:
        jobs.put(None)
    procs = [ctx.Process(target=_worker_main, args=(fn, d, args, jobs, results), daemon=True) for d in devices]
    for p in procs:
        p.start()
    finished, errors = 0, []
    while finished < len(procs):
        try:
            kind, payload = results.get(timeout=1.0)
        except queue_mod.Empty:
            dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
            if dead and results.empty():
                errors.append(f"worker process exited with code {dead[0].exitcode}")
                break
            continue
        if kind == _DONE:
            finished += 1
        elif kind == "error":
            errors.append(payload)
        else:
            yield payload
    for p in procs:
        p.join(timeout=30)
    if errors:
        raise RuntimeError("; ".join(errors))
