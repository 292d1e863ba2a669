"""UDRL: MoCo pre-training of the degradation encoder (paper Fig. 2, Eq. 4).

Query and positive key are two *different* faces degraded with the *same* Eq. 10
parameters, so the only thing they share is the degradation: the encoder has to
represent that and ignore the face. As the official moco/ code: the DRE's pooled
feature goes through its projection head (Linear-LeakyReLU-Linear), L2-normalised;
a momentum key encoder (m 0.999, updated before the keys are computed), a queue of
K negatives, logits [q.k+, q.queue] / T, cross-entropy with label 0, SGD.

Under several ranks the keys of all ranks enter the queue, and the key batch is
shuffled across ranks before the key encoder (MoCo's "shuffle BN"), so BatchNorm
statistics cannot leak which key belongs to which query.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import save_weights
from ..degradations import DegradationRanges
from ..dre import DegradationEncoder
from ..panini import PRESETS, PaniniConfig
from . import dist
from .data import UDRLPairs, next_batch
from .loop import average_buffers, trainable_bn_buffers
from .runner import CosineSchedule
from .state import NonFiniteLoss


def embed(encoder: DegradationEncoder, x: torch.Tensor) -> torch.Tensor:
    """The contrastive embedding: L2-normalised projection of the pooled vDR."""
    return F.normalize(encoder.project(encoder(x)), dim=1)


class MoCo(nn.Module):
    def __init__(self, encoder: DegradationEncoder, queue: int = 8192, momentum: float = 0.999,
                 temperature: float = 0.07, seed: int = 0):
        super().__init__()
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder).requires_grad_(False)
        self.m, self.T = momentum, temperature
        g = torch.Generator().manual_seed(seed + 77)
        self.register_buffer("queue", F.normalize(torch.randn(encoder.dim, queue, generator=g), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            pk.mul_(self.m).add_(pq.detach(), alpha=1.0 - self.m)

    @torch.no_grad()
    def keys(self, xk: torch.Tensor, info: dist.DistInfo, shuffle_seed: int) -> torch.Tensor:
        """Key embeddings; across ranks the batch is shuffled for BatchNorm and un-shuffled."""
        if not info.distributed:
            return embed(self.encoder_k, xk)
        b = xk.shape[0]
        xs = dist.gather_cat(xk, info)
        perm = torch.randperm(xs.shape[0], generator=torch.Generator().manual_seed(shuffle_seed)).to(xs.device)
        mine = perm[info.rank * b:(info.rank + 1) * b]
        k_mine = embed(self.encoder_k, xs[mine])
        k_all = torch.empty(xs.shape[0], k_mine.shape[1], device=xs.device, dtype=k_mine.dtype)
        k_all[perm] = dist.gather_cat(k_mine, info)
        return k_all[info.rank * b:(info.rank + 1) * b]

    def forward(self, xq, xk, info: dist.DistInfo, shuffle_seed: int = 0):
        """-> (logits (B, 1 + K), this rank's keys (B, dim)). Label 0 is the positive."""
        q = embed(self.encoder_q, xq)
        self.momentum_update()
        k = self.keys(xk, info, shuffle_seed)
        l_pos = (q * k).sum(1, keepdim=True)
        l_neg = q @ self.queue.clone().detach()
        return torch.cat([l_pos, l_neg], 1) / self.T, k

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries with `keys` (all ranks' keys, in rank order)."""
        k = self.queue.shape[1]
        idx = (int(self.queue_ptr) + torch.arange(keys.shape[0])) % k
        self.queue[:, idx.to(self.queue.device)] = keys.T.to(self.queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + keys.shape[0]) % k)


@torch.no_grad()
def retrieval_accuracy(encoder: DegradationEncoder, xq: torch.Tensor, xk: torch.Tensor, group: int = 8) -> dict:
    """How well same-degradation pairs are told apart, by cosine similarity, in the trained
    embedding and in the raw vDR that restoration uses. Pair i is (xq[i], xk[i]): two
    different faces under one degradation; every pair has its own degradation.

    pairwise_*: fraction of (query, other pair's key) comparisons in which the query's own
    key is the closer one (chance 0.5). top1_*: the query's own key is the nearest among
    the keys of its block of `group` consecutive pairs (chance 1/group); blocks keep the
    number small because two random draws of Eq. 10 can be nearly the same degradation.
    """
    was = encoder.training
    encoder.eval()
    vq, vk = encoder(xq), encoder(xk)
    n = len(xq)
    eye = torch.eye(n, dtype=torch.bool, device=xq.device)
    block = torch.arange(n, device=xq.device) // group
    same_block = block[:, None] == block[None, :]
    out = {}
    for name, a, b in (("embed", encoder.project(vq), encoder.project(vk)), ("vdr", vq, vk)):
        sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
        out[f"pairwise_{name}"] = float((sim.diagonal()[:, None] > sim)[~eye].float().mean())
        masked = sim.masked_fill(~same_block, float("-inf"))
        out[f"top1_{name}"] = float((masked.argmax(1) == torch.arange(n, device=xq.device)).float().mean())
    out["top1_chance"] = 1.0 / min(group, n)
    encoder.train(was)
    return out


def dre_architecture(cfg) -> tuple[PaniniConfig, int, int]:
    """The preset (with cfg.model overrides) whose DRE is trained, and the HQ / LQ sizes."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {cfg.preset!r}")
    pc = PaniniConfig.from_dict({**dataclasses.asdict(PRESETS[cfg.preset]), **cfg.model})
    return pc, cfg.hq_size or pc.out_size, cfg.lq_size or pc.in_size


class UDRLTrainer:
    def __init__(self, cfg, train_files, val_files, info: dist.DistInfo, notes: list[str] | None = None):
        if cfg.accum != 1:
            raise ValueError("accum must be 1 for UDRL: the momentum encoder and queue advance per batch")
        self.cfg, self.info, self.step, self.micro = cfg, info, 0, 0
        self.notes = notes if notes is not None else []
        pc, hq, lq = dre_architecture(cfg)
        self.arch = {"channels": list(pc.dre_channels), "strides": list(pc.dre_strides),
                     "input_size": pc.dre_input_size}
        torch.manual_seed(cfg.seed)
        enc = DegradationEncoder(pc.dre_channels, pc.dre_strides, pc.dre_input_size)
        self.moco = MoCo(enc, cfg.queue, cfg.momentum, cfg.temperature, cfg.seed).to(info.device)
        dist.broadcast_module(self.moco, info)
        self.opt = torch.optim.SGD(self.moco.encoder_q.parameters(), lr=cfg.lr, momentum=cfg.sgd_momentum,
                                   weight_decay=cfg.weight_decay)
        self.sched = CosineSchedule([self.opt], cfg.total_steps if cfg.cosine else 10 ** 18, 0.0)
        ranges = DegradationRanges.from_dict(cfg.degradation)
        self.data = UDRLPairs(train_files, hq, lq, ranges, cfg.seed)
        self.val = None
        if len(val_files) >= 2 and cfg.val_pairs > 0:
            vp = UDRLPairs(val_files, hq, lq, ranges, cfg.seed + 1_000_003)
            items = [vp[(i // len(val_files), i % len(val_files))] for i in range(cfg.val_pairs)]
            self.val = (torch.stack([it["query"] for it in items]), torch.stack([it["key"] for it in items]))
        self._it = None
        self.samples_per_step = cfg.batch_size * info.world_size
        self.notes.append(f"DRE of preset {cfg.preset}: {self.arch}; HQ {hq} px, LQ {lq} px")

    def _next_batch(self):
        return next_batch(self)

    def train_step(self) -> dict:
        dev = self.info.device
        self.moco.train()
        t = time.perf_counter()
        batch = self._next_batch()
        data_time = time.perf_counter() - t
        xq, xk = batch["query"].to(dev, non_blocking=True), batch["key"].to(dev, non_blocking=True)
        logits, k = self.moco(xq, xk, self.info, shuffle_seed=self.cfg.seed * 1_000_003 + self.step)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=dev)
        loss = F.cross_entropy(logits, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(self.moco.encoder_q.parameters(), self.info)
        acc = (logits.argmax(1) == 0).float().mean()
        values = dist.mean_values(torch.stack([loss.detach(), acc]), self.info).tolist()
        if not math.isfinite(values[0]):
            raise NonFiniteLoss(f"non-finite loss at step {self.step + 1}: infonce={values[0]}")
        self.opt.step()
        self.sched.step()
        average_buffers(trainable_bn_buffers(self.moco.encoder_q), self.info)
        self.moco.enqueue(dist.gather_cat(k, self.info))
        self.step += 1
        return {"infonce": values[0], "acc_batch": values[1], "data_time": data_time}

    def current_lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def validate(self, run_dir) -> dict:
        if self.val is None:
            return {}
        xq, xk = (x.to(self.info.device) for x in self.val)
        return retrieval_accuracy(self.moco.encoder_q, xq, xk)

    def state_dict(self) -> dict:
        return {"moco": self.moco.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "step": self.step, "micro": self.micro, "arch": self.arch}

    def load_state_dict(self, state: dict) -> None:
        if state["arch"] != self.arch:
            raise ValueError(f"the checkpoint's DRE architecture {state['arch']} differs from {self.arch}")
        self.moco.load_state_dict(state["moco"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.step, self.micro, self._it = state["step"], state["micro"], None

    def export(self, path) -> str:
        return export_state(self.moco.encoder_q.state_dict(), self.arch, self.step, path)


def export_state(encoder_state: dict, arch: dict, step: int, path) -> str:
    """The query encoder (with its projection head) as our safetensors file, kind dre."""
    return save_weights(path, encoder_state, "dre", arch,
                        {"trained_steps": str(step), "trained_with": "panini train dre (UDRL/MoCo)"})
