"""A loaded Panini-Net on one device and precision: uint8 BGR face crops in, restored crops out.

This is the seam between the CLI (numpy images) and the network (tensors):
the pipeline hands it batches of aligned crops at the model's input size and
gets back the restored crops plus what `inspect` needs (vDR, theta_1..theta_5).
A caller may give each crop's vDR (e.g. `panini video --smooth-vdr`, which smooths
it along a face track); the model then skips its DRE and builds the DAFI masks from it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import runtime
from .panini import PaniniNet
from .tensors import bgr_to_tensor, tensor_to_bgr


@dataclass
class FaceResult:
    image: np.ndarray                 # uint8 BGR, out_size x out_size
    thetas: np.ndarray | None         # (num_fusions,) GAN-prior usage per DAFI block (theta_5 = theta)
    vdr: np.ndarray | None            # (dr_dim,) degradation representation
    ood: float | None = None          # distance of vDR from the training vDRs (vdr_stats), if known

    @property
    def theta(self) -> float | None:
        return None if self.thetas is None else float(self.thetas[-1])


class Restorer:
    def __init__(self, model: PaniniNet, device: str | torch.device = "cpu", precision: str = "fp32",
                 channels_last: bool | None = None):
        self.device = torch.device(device)
        self.precision = precision
        if channels_last is None:
            channels_last = True
        self.model = runtime.prepare(model, self.device, precision, channels_last)
        self.in_size = model.config.in_size
        self.out_size = model.config.out_size
        self.config = model.config
        self.vdr_stats = getattr(model, "vdr_stats", None)
        self.gate = getattr(model, "gate", None)        # panini_cli.guard's calibrated check, if any

    def __call__(self, crops: list[np.ndarray], *, mask_bias=None, blocks=None, zero_gan: bool = False,
                 zero_img: bool = False, vdr=None) -> list[FaceResult]:
        """Restore the crops. vdr: (len(crops), dr_dim) degradation vectors to use instead of the
        model's DRE (mfr variant only); each FaceResult.vdr is the vDR the masks came from."""
        if not crops:
            return []
        bad = [c.shape for c in crops if c.shape != (self.in_size, self.in_size, 3)]
        if bad:
            raise ValueError(f"crops must be {self.in_size}x{self.in_size}x3 uint8, got {bad[0]}")
        x = bgr_to_tensor(list(crops), self.device)     # CUDA: uint8 copied from pinned memory, converted there
        if vdr is not None:
            vdr = torch.as_tensor(np.asarray(vdr, np.float32)).to(self.device)
        out = runtime.forward(self.model, x, self.precision, mask_bias=mask_bias, blocks=blocks,
                              zero_gan=zero_gan, zero_img=zero_img, return_aux=True, vdr=vdr)
        images = tensor_to_bgr(out.image)
        thetas = out.thetas.detach().float().cpu().numpy() if out.mask_gan else None
        vdr = out.vdr.detach().float().cpu().numpy() if out.vdr is not None else None   # SR: a learned constant
        ood = [None] * len(images)
        if self.vdr_stats is not None and vdr is not None:
            from .vdr_stats import distance
            ood = [float(d) for d in distance(self.vdr_stats, vdr)]
        return [FaceResult(images[i], None if thetas is None else thetas[i], None if vdr is None else vdr[i],
                           ood[i]) for i in range(len(images))]
