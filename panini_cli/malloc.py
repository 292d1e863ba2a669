"""glibc malloc settings for big-tensor work, applied by re-executing the CLI once.

glibc gives every allocation above its mmap threshold (dynamic, 128 KiB-32 MiB) its
own mmap and unmaps it on free, and trims the heap top back to the OS: each forward
pass then page-faults its whole working set in again. With the threshold and the
trim threshold raised, freed activations are reused: an MFR forward takes 2.97-3.09 s
here against 3.55-4.42 s without, peak RSS 1294-1304 MiB against 1194-1301 MiB
(benchmarks/forward.py, tuned and default configs in the same runs). These settings are read when the
process starts, hence the re-exec. Opt out with PANINI_MALLOC=default; settings the
user made (MALLOC_*_ or GLIBC_TUNABLES) are left alone.
"""
from __future__ import annotations

import os
import platform
import sys

TUNED = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}
OPT_OUT = "PANINI_MALLOC"


def wanted(environ, libc: str | None = None) -> bool:
    """True when the tuned settings should be applied to this process."""
    if environ.get(OPT_OUT, "tuned") != "tuned":
        return False
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in environ) or "GLIBC_TUNABLES" in environ:
        return False                        # already tuned, or the user chose their own settings
    libc = platform.libc_ver()[0] if libc is None else libc
    return sys.platform.startswith("linux") and libc == "glibc"


def reexec_tuned(args: list[str]) -> None:
    """Replace this process by `python ARGS` with the tuned settings, when wanted; else return."""
    if not wanted(os.environ):
        return
    env = {**os.environ, **TUNED}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *args], env)
