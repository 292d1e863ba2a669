"""Where results go: the GFPGAN-style folder layout, background writing, the manifest.

out/restored_imgs/<tree>/<stem><suffix>.<ext>   the whole restored image
out/restored_faces/<tree>/<stem>_<NN>.png        each restored face (--save faces)
out/cropped_faces/<tree>/<stem>_<NN>.png         each aligned input crop (--save crops)
out/cmp/<tree>/<stem>_<NN>.png                   input crop | restored face (--save cmp)
out/manifest.jsonl                               one JSON line per input file

Every file is written atomically (images.write_image); the manifest is appended
line by line and flushed, so a killed run leaves only whole files and whole lines.
"""
from __future__ import annotations

import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from . import images

SAVE_KINDS = ("faces", "crops", "cmp")


def parse_save(value: str | None) -> set[str]:
    kinds = {s.strip() for s in (value or "").split(",") if s.strip()}
    bad = kinds - set(SAVE_KINDS)
    if bad:
        raise ValueError(f"--save takes {', '.join(SAVE_KINDS)}; got {', '.join(sorted(bad))}")
    return kinds


def check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be written, before any work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".panini-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"{folder}: output folder is not writable ({e.strerror or e})") from None


def clear_stale_temp_files(folder: Path) -> int:
    """Remove temp files a killed run left behind (images.write_image's `.panini-*.tmp`)."""
    n = 0
    for tmp in folder.rglob(".panini-*.tmp"):
        try:
            tmp.unlink()
            n += 1
        except OSError:
            pass
    return n


def output_stems(rels) -> dict[str, str]:
    """The stem each input's outputs are named by: its own, or, where two inputs of one folder
    share a stem (a.jpg, a.png), the stem with the input's extension (a_jpg, a_png), so
    every input keeps its own outputs whatever --ext says."""
    groups: dict[tuple, list[Path]] = {}
    for rel in map(Path, rels):
        groups.setdefault((str(rel.parent), rel.stem.casefold()), []).append(rel)
    stems = {}
    for members in groups.values():
        for rel in members:
            stems[str(rel)] = rel.stem if len(members) == 1 else f"{rel.stem}_{rel.suffix.lstrip('.').lower()}"
    return stems


class Layout:
    """Output paths of a run; `rels` (every input of the run) lets colliding stems be told apart."""

    def __init__(self, out_dir: Path, ext: str = "auto", suffix: str = "", rels=()):
        self.out_dir, self.ext, self.suffix = Path(out_dir), ext.lower().lstrip("."), suffix
        self.stems = output_stems(rels)

    def stem(self, rel: Path) -> str:
        return self.stems.get(str(rel), Path(rel).stem)

    def image_path(self, rel: Path, src: Path, tag: str = "") -> Path:
        ext = src.suffix.lstrip(".").lower() if self.ext == "auto" else self.ext
        return self.out_dir / "restored_imgs" / rel.parent / f"{self.stem(rel)}{self.suffix}{tag}.{ext}"

    def face_path(self, kind: str, rel: Path, index: int, tag: str = "") -> Path:
        folder = {"faces": "restored_faces", "crops": "cropped_faces", "cmp": "cmp"}[kind]
        return self.out_dir / folder / rel.parent / f"{self.stem(rel)}{self.suffix}{tag}_{index:02d}.png"


def side_by_side(crop: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """Input crop enlarged to the restored size (nearest, so the input is shown as it is) | output."""
    h = restored.shape[0]
    left = cv2.resize(crop, (restored.shape[1], h), interpolation=cv2.INTER_NEAREST)
    return np.concatenate([left, restored], axis=1)


class BackgroundWriter:
    """Runs write jobs on one thread so encoding overlaps the model; errors surface on wait()."""

    def __init__(self, max_pending: int = 8):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self.sem = threading.BoundedSemaphore(max_pending)

    def submit(self, fn, *args, **kwargs) -> Future:
        self.sem.acquire()
        fut = self.pool.submit(fn, *args, **kwargs)
        fut.add_done_callback(lambda _f: self.sem.release())
        return fut

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class Manifest:
    """Append-only JSONL, one line per input, flushed and fsynced as it goes."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def add(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, default=_jsonable)
        with self.lock:
            self.f.write(line + "\n")
            self.f.flush()
            os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
