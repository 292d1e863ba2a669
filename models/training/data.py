"""Training data: HQ face folders, LQ made on the fly, UDRL pairs, resumable batches.

Every random choice for a sample (degradation parameters, noise, flip, the UDRL
partner face) comes from a generator seeded by (seed, epoch, index). A sample is
therefore the same whichever worker, rank or restart makes it, which is what lets
`--resume` and a 2-rank run reproduce a 1-rank run. Batches are addressed by a
global micro-batch counter, so resuming only needs that counter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ..degradations import REFERENCE_SIZE, DegradationParams, DegradationRanges, degrade, jpeg_roundtrip
from ..tensors import bgr_to_tensor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
LQ_MODES = ("eq10", "photo", "bilinear", "pairs", "none")
ORDERS = ("eq10", "photo")


def list_images(folder) -> list[Path]:
    """All images under `folder`, sorted by relative path (a stable order for seeding)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def split_holdout(files: list[Path], count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """-> (train, held out): `count` files chosen by `seed`, never used for training."""
    if count <= 0:
        return list(files), []
    if count >= len(files):
        raise ValueError(f"cannot hold out {count} of {len(files)} images for validation")
    chosen = set(np.random.default_rng([seed, 0x5EED]).choice(len(files), count, replace=False).tolist())
    return ([f for i, f in enumerate(files) if i not in chosen],
            [f for i, f in enumerate(files) if i in chosen])


def read_square(path, size: int) -> np.ndarray:
    """uint8 BGR, centre-cropped to a square and resized to size x size (area when shrinking)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read image: {path}")
    h, w = img.shape[:2]
    if h != w:
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if img.shape[0] != size:
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
        img = cv2.resize(img, (size, size), interpolation=interp)
    return img


def degrade_photo(hq: np.ndarray, params: DegradationParams, out_size: int, rng) -> np.ndarray:
    """Degrade `hq` as a photo holding the face at a smaller size, then cut it as `restore` does.

    `degrade` (Eq. 10) adds the noise and the JPEG on the model's input grid. A real photo
    is blurred, shrunk, noised and compressed at its own resolution, and `restore` then cuts
    the face at the model's input size (panini_cli/faces.py: area shrink when the face is
    more than 1.5x the input, bicubic otherwise). This does the same, with `hq` standing for
    the face at full quality: blur (sigma in 1024-px units, as `degrade`), area shrink by
    r * side / 1024 (r = 4 leaves a 256 px face as it is: a compression-only photo), noise and
    JPEG at that size, then the crop's resize to out_size. Same parameters as Eq. 10.
    """
    h, w = hq.shape[:2]
    if h != w:
        raise ValueError(f"degrade_photo needs a square face, got {w}x{h}")
    scale = h / REFERENCE_SIZE
    img = hq
    sigma_px = params.sigma * scale
    if sigma_px > 0:
        k = 2 * math.ceil(3 * sigma_px) + 1
        img = cv2.GaussianBlur(img, (k, k), sigmaX=sigma_px, sigmaY=sigma_px, borderType=cv2.BORDER_REFLECT_101)
    mid = max(4, round(h / max(1.0, params.r * scale)))
    if mid != h:
        img = cv2.resize(img, (mid, mid), interpolation=cv2.INTER_AREA)
    if params.noise > 0:
        noisy = rng.standard_normal(img.shape, dtype=np.float32)
        noisy *= np.float32(params.noise)
        noisy += img
        np.clip(noisy, 0, 255, out=noisy)
        img = np.rint(noisy).astype(np.uint8)
    img, _ = jpeg_roundtrip(np.ascontiguousarray(img), params.jpeg)
    if mid != out_size:
        interp = cv2.INTER_AREA if mid > 1.5 * out_size else cv2.INTER_CUBIC
        img = cv2.resize(img, (out_size, out_size), interpolation=interp)
    return img


@dataclass(frozen=True)
class MixPart:
    """One component of a degradation mixture: its share, its order (eq10 | photo), its ranges."""
    weight: float
    order: str
    ranges: DegradationRanges
    name: str = ""


def parse_mix(items, base: dict | None = None) -> list[MixPart]:
    """Config items [{"weight", "order", "name"?, "sigma"?, "r"?, "noise"?, "jpeg"?}, ...] -> parts.
    Ranges an item does not name are those of `base` (the `degradation` overrides) or the defaults."""
    parts = []
    for i, item in enumerate(items or ()):
        if not isinstance(item, dict):
            raise ValueError(f"degradation_mix[{i}] must be an object, got {item!r}")
        item = dict(item)
        weight = float(item.pop("weight", 1.0))
        order = item.pop("order", "eq10")
        name = str(item.pop("name", ""))
        if order not in ORDERS:
            raise ValueError(f"degradation_mix[{i}]: order must be one of {ORDERS}, got {order!r}")
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"degradation_mix[{i}]: weight must be > 0, got {weight}")
        try:
            ranges = DegradationRanges.from_dict({**(base or {}), **item})
        except (TypeError, ValueError) as e:
            raise ValueError(f"degradation_mix[{i}]: {e}") from None
        parts.append(MixPart(weight, order, ranges, name))
    return parts


def _key(key) -> tuple[int, int]:
    return (0, int(key)) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))


def _rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index, stream]))


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return bgr_to_tensor(np.ascontiguousarray(img))[0]


class FaceDataset(Dataset):
    """(LQ, GT) pairs for restoration. GT: the HQ face at out_size. LQ at in_size, made by
    Eq. 10 (`eq10`), a plain bilinear resize (`bilinear`, the paper's SR setting), or
    read from a folder matched by relative path (`pairs`); `none` gives GT only (prior
    training). `photo` is `degrade_photo` (the same parameters applied as to a photo). With
    `mix` (parts of `parse_mix`), each sample first draws its part (eq10 or photo order
    and ranges) from its own stream. Keys are (epoch, index)."""

    def __init__(self, files, out_size: int, in_size: int, lq: str = "eq10",
                 ranges: DegradationRanges | None = None, seed: int = 0, flip: bool = True,
                 pairs_dir=None, root=None, mix: list[MixPart] | None = None):
        if lq not in LQ_MODES:
            raise ValueError(f"lq must be one of {LQ_MODES}, got {lq!r}")
        if mix and lq not in ORDERS:
            raise ValueError(f"a degradation mix makes the LQ itself: lq must be eq10 or photo, got {lq!r}")
        self.files = list(files)
        self.out_size, self.in_size, self.lq = out_size, in_size, lq
        self.ranges = ranges or DegradationRanges()
        self.seed, self.flip = seed, flip
        self.mix = list(mix or [])
        total = sum(p.weight for p in self.mix)
        self._cum = np.cumsum([p.weight / total for p in self.mix]) if self.mix else None
        self.lq_files = None
        if lq == "pairs":
            if pairs_dir is None or root is None:
                raise ValueError("lq=pairs needs the folder of LQ images (--pairs)")
            self.lq_files = [_match(Path(pairs_dir), Path(root), f) for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key) -> dict:
        epoch, index = _key(key)
        gt = read_square(self.files[index], self.out_size)
        if self.lq in ORDERS:
            lq, params = self.degrade(gt, epoch, index)
        elif self.lq == "none":
            lq, params = None, None
        elif self.lq == "bilinear":
            lq, params = cv2.resize(gt, (self.in_size, self.in_size), interpolation=cv2.INTER_LINEAR), None
        else:
            lq, params = read_square(self.lq_files[index], self.in_size), None
        if self.flip and _rng(self.seed, epoch, index, 1).random() < 0.5:
            gt, lq = gt[:, ::-1], (None if lq is None else lq[:, ::-1])
        out = {"gt": _to_tensor(gt), "index": index}
        if lq is not None:
            out["lq"] = _to_tensor(lq)
        out["params"] = torch.tensor([params.sigma, params.r, params.noise, params.jpeg] if params
                                     else [float("nan")] * 4, dtype=torch.float32)
        return out

    def part(self, epoch: int, index: int) -> int:
        """Index of the mixture part sample (epoch, index) uses (-1 without a mix)."""
        if not self.mix:
            return -1
        u = _rng(self.seed, epoch, index, 3).random()
        return min(int(np.searchsorted(self._cum, u, side="right")), len(self.mix) - 1)

    def degrade(self, gt: np.ndarray, epoch: int, index: int) -> tuple[np.ndarray, DegradationParams]:
        rng = _rng(self.seed, epoch, index, 0)
        order, ranges = self.lq, self.ranges
        if self.mix:
            p = self.mix[self.part(epoch, index)]
            order, ranges = p.order, p.ranges
        params = ranges.sample(rng)
        if order == "photo":
            return degrade_photo(gt, params, self.in_size, rng), params
        return degrade(gt, params, out_size=self.in_size, rng=rng), params


def _match(lq_root: Path, hq_root: Path, hq: Path) -> Path:
    rel = hq.relative_to(hq_root).with_suffix("")
    for suffix in [hq.suffix] + sorted(IMAGE_SUFFIXES):
        cand = lq_root / rel.with_suffix(suffix)
        if cand.exists():
            return cand
    raise FileNotFoundError(f"no LQ image for {hq} in {lq_root} (expected {rel}.*)")


class UDRLPairs(Dataset):
    """UDRL samples (paper Fig. 2): two *different* HQ faces degraded with one shared
    DegradationParams draw (independent noise), the query and its positive key."""

    def __init__(self, files, hq_size: int, lq_size: int, ranges: DegradationRanges | None = None,
                 seed: int = 0):
        if len(files) < 2:
            raise ValueError("UDRL needs at least two different faces")
        self.files = list(files)
        self.hq_size, self.lq_size = hq_size, lq_size
        self.ranges = ranges or DegradationRanges()
        self.seed = seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key) -> dict:
        epoch, index = _key(key)
        rng = _rng(self.seed, epoch, index, 2)
        partner = int(rng.integers(len(self.files) - 1))
        partner += partner >= index                      # any face but this one
        params = self.ranges.sample(rng)
        noise_q, noise_k = rng.spawn(2)
        xq = degrade(read_square(self.files[index], self.hq_size), params, self.lq_size, noise_q)
        xk = degrade(read_square(self.files[partner], self.hq_size), params, self.lq_size, noise_k)
        return {"query": _to_tensor(xq), "key": _to_tensor(xk), "index": index, "partner": partner,
                "params": torch.tensor([params.sigma, params.r, params.noise, params.jpeg])}


class ResumableBatches(Sampler):
    """Endless micro-batches of (epoch, index) keys for one rank, starting at `start`.

    Each epoch is a DistributedSampler permutation (seed + epoch, drop_last), cut into
    batches of `batch` per rank. With world W and batch b, the union over ranks of
    micro-batch c is exactly micro-batch c of one rank with batch W*b, because the
    sampler deals the permutation out round-robin: that makes multi-rank runs
    reproduce single-rank ones.
    """

    def __init__(self, n: int, batch: int, rank: int = 0, world: int = 1, seed: int = 0,
                 start: int = 0, shuffle: bool = True):
        self.sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle,
                                          seed=seed, drop_last=True)
        self.batch, self.start = batch, start
        self.per_epoch = len(self.sampler) // batch
        if self.per_epoch < 1:
            raise ValueError(f"{n} images are too few for a global batch of {batch * world}")

    def epoch_indices(self, epoch: int) -> list[int]:
        self.sampler.set_epoch(epoch)
        return list(self.sampler)

    def __iter__(self):
        c, cached = self.start, (None, None)
        while True:
            epoch, offset = divmod(c, self.per_epoch)
            if cached[0] != epoch:
                cached = (epoch, self.epoch_indices(epoch))
            yield [(epoch, i) for i in cached[1][offset * self.batch:(offset + 1) * self.batch]]
            c += 1


def worker_init(_worker_id: int) -> None:
    """One OpenCV thread per loader worker (workers x OpenCV threads would oversubscribe).
    SIGINT/SIGTERM are ignored: the training process decides when to stop (after saving a
    checkpoint) and then shuts its workers down; workers also exit when it dies."""
    import signal

    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: Dataset, batches: ResumableBatches, num_workers: int, pin: bool = False):
    """A DataLoader over `batches`. With workers, OpenCV in this process is set to one thread
    first: a worker forked while OpenCV's thread pool exists deadlocks in its first cv2 call
    (seen here with opencv-python 4.x), and the workers do the image work anyway."""
    if num_workers:
        cv2.setNumThreads(1)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                       worker_init_fn=worker_init if num_workers else None,
                                       pin_memory=pin, persistent_workers=False,
                                       prefetch_factor=4 if num_workers else None)


def next_batch(trainer):
    """The trainer's next micro-batch, from a loader built lazily at `trainer.micro`.

    Shared by the restore, UDRL and prior trainers: the loader starts where the
    step counter says, so a resumed run sees exactly the batches it would have seen.
    """
    if trainer._it is None:
        batches = ResumableBatches(len(trainer.data), trainer.cfg.batch_size, trainer.info.rank,
                                   trainer.info.world_size, trainer.cfg.seed, start=trainer.micro)
        trainer._it = iter(make_loader(trainer.data, batches, trainer.cfg.num_workers,
                                       pin=trainer.info.device.type == "cuda"))
    batch = next(trainer._it)
    trainer.micro += 1
    return batch
