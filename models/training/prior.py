"""A short StyleGAN2 pre-training, so a GAN prior can be made where none can be downloaded.

StyleGAN2 (Karras et al. 2020) with the essentials only: non-saturating logistic loss,
lazy R1 on reals every `r1_every` steps (Adam hyper-parameters corrected by
r1_every / (r1_every + 1) as in the paper), random noise inputs, an EMA generator
with a half-life in images. Left out: style mixing, path-length regularisation and
ADA augmentation; this is for small models on small data, not for FFHQ-quality priors.

Randomness (latents, noise) is drawn from generators seeded by (seed, step, rank), so
a resumed or re-split run draws the same numbers.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import save_weights
from ..stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from ..tensors import tensor_to_bgr
from . import dist
from .data import FaceDataset, next_batch
from .loop import ema_update
from .losses import r1_penalty
from .state import NonFiniteLoss


class PriorTrainer:
    def __init__(self, cfg, train_files, val_files, info: dist.DistInfo, notes: list[str] | None = None):
        self.cfg, self.info, self.step, self.micro = cfg, info, 0, 0
        self.notes = notes if notes is not None else []
        self.arch = {"size": cfg.size, "style_dim": cfg.style_dim, "n_mlp": cfg.n_mlp,
                     "channel_base": cfg.channel_base, "channel_max": cfg.channel_max}
        torch.manual_seed(cfg.seed)
        dev = info.device
        self.G = StyleGAN2Generator(**self.arch).to(dev)
        self.D = StyleGAN2Discriminator(cfg.size, cfg.channel_base, cfg.channel_max).to(dev)
        dist.broadcast_module(self.G, info)
        dist.broadcast_module(self.D, info)
        self.ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        c = cfg.r1_every / (cfg.r1_every + 1)
        b1, b2 = cfg.betas
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=(b1, b2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr * c, betas=(b1 ** c, b2 ** c))
        global_batch = cfg.batch_size * cfg.accum * info.world_size
        self.gamma = cfg.r1_gamma if cfg.r1_gamma >= 0 else 0.0002 * cfg.size ** 2 / global_batch
        self.ema_beta = 0.5 ** (global_batch / max(1e-8, cfg.ema_kimg * 1000))
        self.notes.append(f"StyleGAN2 {self.arch}; R1 gamma {self.gamma:.4g} every {cfg.r1_every} steps; "
                          f"EMA beta {self.ema_beta:.6f}; no style mixing, path-length reg or ADA")
        self.data = FaceDataset(train_files, cfg.size, cfg.size, "none", seed=cfg.seed, flip=cfg.flip)
        self._it = None
        self.samples_per_step = global_batch
        g = torch.Generator().manual_seed(cfg.seed + 99)
        self.val_z = torch.randn(cfg.samples, cfg.style_dim, generator=g)

    def _next_batch(self):
        return next_batch(self)

    def _z(self, micro: int, phase: int) -> torch.Tensor:
        seed = ((self.cfg.seed * 1_000_003 + self.step) * 64 + micro * 4 + phase) * 4096 + self.info.rank
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.cfg.batch_size, self.cfg.style_dim, generator=g).to(self.info.device)

    def train_step(self) -> dict:
        cfg, dev = self.cfg, self.info.device
        self.G.train()
        self.D.train()
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        do_r1 = cfg.r1_every > 0 and self.step % cfg.r1_every == 0
        sums = torch.zeros(5, device=dev)
        data_time = 0.0
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(cfg.seed * 7919 + self.step * 131 + self.info.rank)   # the noise inputs
            for a in range(cfg.accum):
                t = time.perf_counter()
                real = self._next_batch()["gt"].to(dev, non_blocking=True)
                data_time += time.perf_counter() - t
                # discriminator: softplus(D(fake)) + softplus(-D(real)), lazy R1
                self.D.requires_grad_(True)
                with torch.no_grad():
                    fake = self.G(self._z(a, 0))
                d_fake, d_real = F.softplus(self.D(fake)).mean(), F.softplus(-self.D(real)).mean()
                r1 = torch.zeros((), device=dev)
                if do_r1:
                    real_r = real.detach().requires_grad_(True)
                    r1 = r1_penalty(self.D(real_r), real_r)
                ((d_fake + d_real + self.gamma / 2 * r1 * cfg.r1_every) / cfg.accum).backward()
                # generator: softplus(-D(G(z)))
                self.D.requires_grad_(False)
                g_loss = F.softplus(-self.D(self.G(self._z(a, 1)))).mean()
                (g_loss / cfg.accum).backward()
                sums += torch.stack([g_loss, d_real, d_fake, r1, d_real + d_fake]).detach()
        self.D.requires_grad_(True)
        dist.average_gradients(self.G.parameters(), self.info)
        dist.average_gradients(self.D.parameters(), self.info)
        vals = dist.mean_values(sums / cfg.accum, self.info).tolist()
        names = ("g_loss", "d_real", "d_fake", "r1", "d_loss")
        values = dict(zip(names, vals))
        if not all(np.isfinite(vals)):
            raise NonFiniteLoss(f"non-finite loss at step {self.step + 1}: {values}")
        if not do_r1:
            values.pop("r1")
        self.opt_d.step()
        self.opt_g.step()
        self.step += 1
        ema_update(self.ema, self.G, self.ema_beta, self.step)
        values["data_time"] = data_time
        return values

    def current_lr(self) -> float:
        return self.opt_g.param_groups[0]["lr"]

    @torch.no_grad()
    def validate(self, run_dir) -> dict:
        """Save a grid of EMA samples from fixed latents; there is no cheap offline FID."""
        import cv2

        imgs = tensor_to_bgr(self.ema(self.val_z.to(self.info.device), noise_mode="const"))
        n = int(np.ceil(np.sqrt(len(imgs))))
        blank = np.zeros_like(imgs[0])
        rows = [np.concatenate((imgs + [blank] * (n * n - len(imgs)))[r * n:(r + 1) * n], 1) for r in range(n)]
        folder = run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"step_{self.step:07d}.png"), np.concatenate(rows, 0))
        return {"sample_std": float(np.std(np.stack(imgs).astype(np.float32), axis=0).mean())}

    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "ema": self.ema.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "step": self.step, "micro": self.micro, "arch": self.arch}

    def load_state_dict(self, state: dict) -> None:
        if state["arch"] != self.arch:
            raise ValueError(f"the checkpoint's StyleGAN2 {state['arch']} differs from {self.arch}")
        for name in ("G", "D", "ema", "opt_g", "opt_d"):
            getattr(self, name).load_state_dict(state[name])
        self.step, self.micro, self._it = state["step"], state["micro"], None

    def export(self, path) -> str:
        return export_state(self.ema.state_dict(), self.D.state_dict(), self.arch, self.step, path)


def export_state(ema_state: dict, d_state: dict, arch: dict, step: int, path) -> str:
    """EMA generator + discriminator as our kind=stylegan2 file (what `--prior` reads)."""
    state = {**{f"generator.{k}": v for k, v in ema_state.items()},
             **{f"discriminator.{k}": v for k, v in d_state.items()}}
    return save_weights(path, state, "stylegan2", arch,
                        {"trained_steps": str(step), "trained_with": "panini train prior"})
