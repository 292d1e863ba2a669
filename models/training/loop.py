"""Restoration fine-tuning of Panini-Net (paper "Training and Loss"; official mmedit config).

G = Panini-Net with the DRE frozen (no gradients, BatchNorm in eval mode) and its
StyleGAN2 trainable; D = the StyleGAN2 discriminator. One step, as mmedit's GLEAN/SRGAN
train_step: fake = G(lq); G loss = L1 + perceptual (or the D feature-matching substitute)
+ 1e-2 vanilla GAN through a frozen D; D loss = BCE(D(gt), 1) + BCE(D(fake.detach()), 0).
Both optimiser steps are deferred until every micro-batch has been back-propagated:
the fake was made before either update, so this equals mmedit's order, and it lets
gradient accumulation, rank averaging and the NaN check happen before anything moves.

BatchNorm: the IFE's CBAM has one BatchNorm on a one-channel map. The official model was
trained with one image per GPU, so its training statistics were always those of one
image. PerSampleBatchNorm keeps that for any batch size, and running estimates are
averaged over the batch and over ranks: results no longer depend on how the global
batch is split over processes (the 2-rank test relies on it).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..checkpoints import import_file, read_weights, save_weights
from ..degradations import DegradationRanges
from ..panini import PRESETS, PaniniConfig, PaniniNet
from ..stylegan2 import StyleGAN2Discriminator
from ..tensors import tensor_to_bgr
from . import dist
from .data import FaceDataset, next_batch, parse_mix
from .losses import (PerceptualLoss, discriminator_features, feature_matching, gan_d_loss, gan_g_loss,
                     l1_loss, load_vgg16)
from .metrics import psnr, ssim
from .runner import CosineSchedule
from .state import NonFiniteLoss

TASK_LQ = {"mfr": "eq10", "sr": "bilinear", "small": "eq10", "catconv": "eq10", "base128": "eq10"}
LOSS_NAMES = ("g_total", "l1", "perceptual", "gan_g", "d_real", "d_fake", "d_real_logit", "d_fake_logit")


class PerSampleBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are per sample (as with one image per GPU)."""

    @classmethod
    def replace(cls, bn: nn.BatchNorm2d) -> "PerSampleBatchNorm2d":
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        return new.to(bn.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        mean = x.mean((2, 3), keepdim=True)
        var = x.var((2, 3), unbiased=False, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            n = x.shape[2] * x.shape[3]
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.mean(0).flatten(), alpha=m)
                self.running_var.mul_(1 - m).add_((var * n / max(1, n - 1)).mean(0).flatten(), alpha=m)
                self.num_batches_tracked += 1
        return y


def trainable_bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            for b in (m.running_mean, m.running_var) if b is not None]


def average_buffers(buffers: list[torch.Tensor], info: dist.DistInfo) -> None:
    if not info.distributed or not buffers:
        return
    flat = dist.mean_values(torch.cat([b.reshape(-1) for b in buffers]), info)
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """EMA of the weights (buffers copied); early steps use a smaller decay, (1+step)/(10+step)."""
    decay = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def _read_any(path) -> tuple[str, dict, dict]:
    if str(path).endswith(".safetensors"):
        kind, cfg, state, _ = read_weights(path)
        return kind, cfg, state
    imported = import_file(path)
    return imported.kind, imported.config, imported.state_dict


def resolve_model(cfg, prior=None, dre=None, notes: list[str] | None = None, init_config: dict | None = None):
    """PaniniConfig from the task preset (or the --init model's config), cfg.model overrides,
    and the prior/DRE files' architectures.
    -> (PaniniConfig, prior (kind, config, state) or None, dre ... or None)."""
    notes = notes if notes is not None else []
    if cfg.task not in TASK_LQ:
        raise ValueError(f"task must be one of {', '.join(TASK_LQ)}, got {cfg.task!r}")
    if init_config is not None:
        base = dataclasses.asdict(PaniniConfig.from_dict(init_config))
        norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v      # noqa: E731 (JSON lists)
        clash = {k: (v, base.get(k)) for k, v in cfg.model.items() if norm(base.get(k)) != norm(v)}
        if clash:
            raise ValueError(f"model overrides contradict the --init model's architecture: {clash}")
        return PaniniConfig.from_dict(base), None, None
    fields = {**dataclasses.asdict(PRESETS[cfg.task]), **cfg.model}
    prior_w = dre_w = None
    if prior:
        prior_w = _read_any(prior)
        if prior_w[0] != "stylegan2":
            raise ValueError(f"{prior}: holds a {prior_w[0]} model; --prior needs a StyleGAN2 file")
        pc = prior_w[1]
        arch = {"out_size": pc["size"], "style_dim": pc["style_dim"], "n_mlp": pc["n_mlp"],
                "channel_base": pc["channel_base"], "channel_max": pc["channel_max"]}
        clash = {k: (cfg.model[k], v) for k, v in arch.items() if k in cfg.model and cfg.model[k] != v}
        if clash:
            raise ValueError(f"model overrides contradict the prior's architecture: {clash}")
        changed = {k: v for k, v in arch.items() if fields[k] != v}
        if changed:
            notes.append(f"StyleGAN2 architecture taken from the prior {Path(prior).name}: {changed}")
        fields.update(arch)
    if dre:
        dre_w = _read_any(dre)
        if dre_w[0] != "dre":
            raise ValueError(f"{dre}: holds a {dre_w[0]} model; --dre needs a degradation encoder file")
        if fields["variant"] != "mfr":
            raise ValueError(f"the {fields['variant']} variant has no DRE; drop --dre")
        dc = dre_w[1]
        fields.update(dre_channels=tuple(dc["channels"]), dre_strides=tuple(dc["strides"]),
                      dre_input_size=dc["input_size"], dr_dim=dc["channels"][-1])
    return PaniniConfig.from_dict(fields), prior_w, dre_w


class RestoreTrainer:
    def __init__(self, cfg, train_files, val_files, info: dist.DistInfo, *, prior=None, dre=None,
                 vgg=None, pairs_dir=None, data_root=None, notes: list[str] | None = None, init=None):
        self.cfg, self.info, self.step, self.micro = cfg, info, 0, 0
        self.notes = notes if notes is not None else []
        dev = info.device
        init_w = None
        if init:
            if prior or dre:
                raise ValueError("--init holds a whole Panini-Net (its StyleGAN2 and DRE included): "
                                 "drop --prior and --dre")
            if not Path(init).exists():                  # a registry name: default, mfr, ...
                from ..registry import resolve
                init = resolve(str(init))[0]
            init_w = _read_any(init)
            if init_w[0] != "panini":
                raise ValueError(f"{init}: holds a {init_w[0]} model; --init needs a Panini-Net file")
        self.model_config, prior_w, dre_w = resolve_model(cfg, prior, dre, self.notes,
                                                          init_w[1] if init_w else None)
        mc = self.model_config
        torch.manual_seed(cfg.seed)
        self.G = PaniniNet(mc)
        self.D = StyleGAN2Discriminator(mc.out_size, mc.channel_base, mc.channel_max, cfg.d_mbstd_group)
        if init_w:
            self.G.load_state_dict(init_w[2])          # strict; float16 files are cast to float32
            self.notes.append(f"generator (StyleGAN2, IFE, latent encoder, DRE, masks) initialised from "
                              f"{Path(init).name}; the discriminator starts from random weights")
        elif prior_w:
            st = prior_w[2]
            self.G.stylegan.load_state_dict({k[10:]: v for k, v in st.items() if k.startswith("generator.")})
            dsd = {k[14:]: v for k, v in st.items() if k.startswith("discriminator.")}
            if dsd:
                self.D.load_state_dict(dsd)
            else:
                self.notes.append("the prior file has no discriminator: D starts from random weights")
        else:
            self.notes.append("no --prior: the StyleGAN2 generator and discriminator start from random "
                              "weights (the paper fine-tunes a pre-trained StyleGAN2)")
        if self.G.dre is not None:
            if dre_w:
                self.G.dre.load_state_dict(dre_w[2])
            elif not init_w:
                self.notes.append("no --dre: the DRE is random and frozen (train one with `panini train dre`)")
            self.G.dre.requires_grad_(False)
        self.G.ife.cbam.spatial_bn = PerSampleBatchNorm2d.replace(self.G.ife.cbam.spatial_bn)
        self.G.to(dev)
        self.D.to(dev)
        dist.broadcast_module(self.G, info)
        dist.broadcast_module(self.D, info)
        self.ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.perceptual = None
        if vgg:
            self.perceptual = PerceptualLoss(load_vgg16(vgg)).to(dev)
            self.notes.append(f"perceptual loss: VGG16 conv4_3 MSE from {vgg}, weight {cfg.perceptual_weight}")
        else:
            self.notes.append("no VGG16 weights given (--vgg): the perceptual term is replaced by feature "
                              f"matching on the discriminator (L1, weight {cfg.feature_match_weight})")
        # A stage whose losses never look at D (L1 or VGG only: the PSNR-oriented warm-up of ESRGAN and
        # GFPGAN practice) skips D's forward and backward, about half of a step's time.
        self.use_d = cfg.gan_weight > 0 or (self.perceptual is None and cfg.feature_match_weight > 0)
        if not self.use_d:
            self.notes.append("gan_weight=0 and no discriminator feature matching: D is not run in this "
                              "stage (its weights and optimiser state are kept as they are)")
        self.opt_g = torch.optim.Adam([p for p in self.G.parameters() if p.requires_grad], lr=cfg.lr_g,
                                      betas=tuple(cfg.betas))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas))
        self.sched = CosineSchedule([self.opt_g, self.opt_d], cfg.total_steps, cfg.lr_min)
        self.amp = cfg.amp
        if cfg.amp != "none" and dev.type != "cuda":
            self.notes.append(f"amp={cfg.amp} ignored: mixed precision is used on CUDA only")
            self.amp = "none"
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be none, bf16 or fp16, got {cfg.amp!r}")
        fp16 = self.amp == "fp16"
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=fp16)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=fp16)
        lq_mode = TASK_LQ[cfg.task] if cfg.lq == "auto" else cfg.lq
        ranges = DegradationRanges.from_dict(cfg.degradation)
        mix = parse_mix(cfg.degradation_mix, cfg.degradation)
        if mix:
            self.notes.append("LQ from a degradation mix: " + "; ".join(
                f"{p.name or i} {p.weight:g} ({p.order}: {p.ranges.to_dict()})" for i, p in enumerate(mix)))
        self.data = FaceDataset(train_files, mc.out_size, mc.in_size, lq_mode, ranges, cfg.seed, cfg.flip,
                                pairs_dir, data_root, mix=mix)
        self.val = FaceDataset(val_files, mc.out_size, mc.in_size, lq_mode, ranges, cfg.seed + 1_000_003,
                               False, pairs_dir, data_root, mix=mix) if val_files else None
        self._it = None
        self.samples_per_step = cfg.batch_size * cfg.accum * info.world_size

    # ---------------------------------------------------------------- data
    def _next_batch(self):
        return next_batch(self)

    def _autocast(self):
        if self.amp == "none":
            return torch.autocast(self.info.device.type, enabled=False)
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    # ---------------------------------------------------------------- one step
    def train_step(self) -> dict:
        cfg, dev = self.cfg, self.info.device
        self.G.train()
        if self.G.dre is not None:
            self.G.dre.eval()
        self.D.train()
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        do_g = self.step % max(1, cfg.disc_steps) == 0
        sums = torch.zeros(len(LOSS_NAMES), device=dev)
        data_time = 0.0
        for _ in range(cfg.accum):
            t = time.perf_counter()
            batch = self._next_batch()
            data_time += time.perf_counter() - t
            lq = batch["lq"].to(dev, non_blocking=True)
            gt = batch["gt"].to(dev, non_blocking=True)
            if not self.use_d:
                with self._autocast():
                    fake = self.G(lq)
                    l1 = l1_loss(fake.float(), gt)
                    perc = self.perceptual(fake.float(), gt) if self.perceptual is not None else l1 * 0
                    g_loss = cfg.l1_weight * l1 + cfg.perceptual_weight * perc
                self.scaler_g.scale(g_loss / cfg.accum).backward()
                zero = torch.zeros((), device=dev)
                sums += torch.stack([g_loss, l1, perc, zero, zero, zero, zero, zero]).detach().float()
                continue
            with self._autocast():
                fake = self.G(lq)
                self.D.requires_grad_(True)
                real_feats, real_logits = discriminator_features(self.D, gt)
            g_terms = torch.zeros(4, device=dev)
            if do_g:
                self.D.requires_grad_(False)
                with self._autocast():
                    fake_feats, fake_logits = discriminator_features(self.D, fake)
                    l1 = l1_loss(fake.float(), gt)
                    if self.perceptual is not None:
                        perc, w_p = self.perceptual(fake.float(), gt), cfg.perceptual_weight
                    else:
                        perc, w_p = feature_matching(fake_feats, real_feats), cfg.feature_match_weight
                    gan = gan_g_loss(fake_logits.float())
                    g_loss = cfg.l1_weight * l1 + w_p * perc + cfg.gan_weight * gan
                self.scaler_g.scale(g_loss / cfg.accum).backward()
                self.D.requires_grad_(True)
                g_terms = torch.stack([g_loss, l1, perc, gan]).detach().float()
            with self._autocast():
                fake_logits_d = self.D(fake.detach())
                d_real, d_fake = gan_d_loss(real_logits.float(), fake_logits_d.float())
            self.scaler_d.scale((d_real + d_fake) / cfg.accum).backward()
            sums += torch.cat([g_terms, torch.stack([d_real, d_fake, real_logits.float().mean(),
                                                     fake_logits_d.float().mean()]).detach()])
        dist.average_gradients(self.G.parameters(), self.info)
        if self.use_d:
            dist.average_gradients(self.D.parameters(), self.info)
        losses = dist.mean_values(sums / cfg.accum, self.info)
        values = {k: float(v) for k, v in zip(LOSS_NAMES, losses.tolist())}
        if not all(math.isfinite(v) for v in values.values()):
            bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
            raise NonFiniteLoss(f"non-finite loss at step {self.step + 1}: {bad}")
        if do_g or not self.use_d:
            self.scaler_g.step(self.opt_g)
            self.scaler_g.update()
        if self.use_d:
            self.scaler_d.step(self.opt_d)
            self.scaler_d.update()
        self.sched.step()
        average_buffers(trainable_bn_buffers(self.G), self.info)
        self.step += 1
        ema_update(self.ema, self.G, cfg.ema_decay, self.step)
        values["data_time"] = data_time
        return values

    def current_lr(self) -> float:
        return self.opt_g.param_groups[0]["lr"]

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self, run_dir) -> dict:
        if self.val is None:
            return {}
        import cv2

        self.ema.eval()
        rows, scores = [], {"psnr": [], "ssim": [], "psnr_bicubic": [], "ssim_bicubic": [], "theta": []}
        size = self.model_config.out_size
        for start in range(0, len(self.val), 8):
            items = [self.val[(0, i)] for i in range(start, min(len(self.val), start + 8))]
            lq = torch.stack([it["lq"] for it in items]).to(self.info.device)
            out = self.ema(lq, return_aux=True)
            for i, (res, gt, low) in enumerate(zip(tensor_to_bgr(out.image), tensor_to_bgr(torch.stack(
                    [it["gt"] for it in items])), tensor_to_bgr(lq))):
                base = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
                scores["psnr"].append(psnr(res, gt))
                scores["ssim"].append(ssim(res, gt))
                scores["psnr_bicubic"].append(psnr(base, gt))
                scores["ssim_bicubic"].append(ssim(base, gt))
                if start + i < self.cfg.samples:
                    rows.append(np.concatenate([base, res, gt], 1))
            if out.mask_gan:
                scores["theta"] += out.theta.float().cpu().tolist()
        if rows:
            folder = Path(run_dir) / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"step_{self.step:07d}.png"), np.concatenate(rows, 0))
        return {k: float(np.mean(v)) for k, v in scores.items() if v}

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "ema": self.ema.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched": self.sched.state_dict(), "scaler_g": self.scaler_g.state_dict(),
                "scaler_d": self.scaler_d.state_dict(), "step": self.step, "micro": self.micro,
                "model_config": self.model_config.to_json(), "notes": list(self.notes)}

    def load_state_dict(self, state: dict) -> None:
        if json.loads(state["model_config"]) != json.loads(self.model_config.to_json()):
            raise ValueError("the checkpoint's model architecture differs from this run's config")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched.load_state_dict(state["sched"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        self.step, self.micro, self._it = state["step"], state["micro"], None

    def export(self, path, half: bool = False) -> str:
        return export_state(self.ema.state_dict(), self.model_config.to_json(), self.step, path, half)


def export_state(ema_state: dict, model_config_json: str, step: int, path, half: bool = False) -> str:
    """The EMA generator as our safetensors file (kind panini): `panini restore -m FILE` loads it.
    half: float tensors stored as float16 (half the size; loading casts them back to float32)."""
    extra = {"trained_steps": str(step), "trained_with": "panini train restore (EMA generator)"}
    if half:
        ema_state = {k: (v.detach().half() if v.is_floating_point() else v) for k, v in ema_state.items()}
        extra["stored_dtype"] = "float16 (loaded as float32)"
    return save_weights(path, ema_state, "panini", json.loads(model_config_json), extra)

