"""`panini video --smooth-vdr TAU`: the degradation vector vDR smoothed along each face track.

Panini-Net's DAFI masks are a function of vDR alone (Eq. 6), and the DRE reads vDR
from the crop, so crop jitter, codec noise and small pose changes move vDR and with
it the share of GAN prior versus image features, which shows as flicker of the
restored face. With this option the tracking side computes each face's vDR (the DRE
is a small conv stack, cheap next to the rest of the network), smooths it along the
face's track, and the model builds the masks from the smoothed vector instead of
running its DRE (PaniniNet.forward(vdr=...)).

Why a causal exponential moving average and not the centred Gaussian of the landmarks:
- a centred window on vDR would need the vDRs of frames ahead, which need those
  frames' crops, which need their own landmark look-ahead: a second look-ahead stage
  and its frames in memory. The EMA needs the frames so far only;
- its lag costs little here: a late landmark makes the crop trail a moving head, a
  late vDR only makes the masks follow a change of degradation (focus, motion blur,
  compression) over a few frames, and such changes are slow; a scene cut ends the
  track (tracking.FaceTracker), and a new track starts its own average;
- its state is one vector per live track: it is saved with the tracking state at each
  chunk boundary, so a resumed run continues the averages exactly, and the `--gpus`
  planner writes the smoothed vDRs into its chunk plans, so worker processes use the
  very same numbers (JSON keeps float64 exactly).

TAU is the time constant in frames: each frame's vDR enters with weight
alpha = 1 - exp(-1 / TAU), so the weight of a frame falls by e every TAU frames
(the lag on a steady change is about TAU frames; 0 = off). A track absent from a frame
and from the frames the landmark smoother has read ahead loses its average.

The smoothing DRE is a float32 copy in the contiguous memory format, run once per
frame on that frame's faces, on the device of the model (the first device with
--gpus), whatever --precision says: the same numbers in every path. Models without
a DRE (`sr`: a learned constant vDR; `catconv`: no masks) have nothing to smooth.
"""
from __future__ import annotations

import copy
import math

import numpy as np


class VdrSmoother:
    """Per-track EMA of the DRE's vDR. Not thread-safe: one caller (the frame preparer)."""

    def __init__(self, dre, tau: float, device="cpu"):
        import torch

        if tau <= 0:
            raise ValueError("tau must be > 0")
        self.device = torch.device(device)
        self.dre = copy.deepcopy(dre).float().to(self.device, memory_format=torch.contiguous_format).eval()
        self.tau, self.alpha = tau, 1.0 - math.exp(-1.0 / tau)
        self.ema: dict[int, np.ndarray] = {}

    def raw(self, crops: list[np.ndarray]) -> np.ndarray:
        """(len(crops), dr_dim) float32: the DRE's vDR of each uint8 BGR crop, as one batch."""
        import torch

        from panini_models.tensors import bgr_to_tensor
        if not crops:
            return np.zeros((0, self.dre.dim), np.float32)
        with torch.inference_mode():
            return self.dre(bgr_to_tensor(list(crops)).to(self.device)).float().cpu().numpy()

    def step(self, tids: list[int], crops: list[np.ndarray], live=()) -> list[np.ndarray]:
        """One frame: the smoothed vDR (float32) of each face. Averages of tracks neither in
        `tids` nor in `live` are dropped."""
        for tid, v in zip(tids, self.raw(crops).astype(np.float64)):
            prev = self.ema.get(tid)
            self.ema[tid] = v if prev is None else prev + self.alpha * (v - prev)
        keep = set(tids) | set(live)
        for tid in [t for t in self.ema if t not in keep]:
            del self.ema[tid]
        return [self.ema[t].astype(np.float32) for t in tids]

    def state(self) -> dict:
        return {str(t): v.tolist() for t, v in self.ema.items()}

    def load(self, state: dict) -> None:
        self.ema = {int(t): np.array(v, np.float64) for t, v in state.items()}


def smoother_for(owner, tau: float, device="cpu") -> VdrSmoother | None:
    """A smoother for `owner.dre` (owner: a PaniniNet, torch.compile's wrapper of one, or
    workers.Workers); None when tau is 0 or the model has no DRE."""
    dre = getattr(owner, "dre", None)
    return VdrSmoother(dre, tau, device) if tau > 0 and dre is not None else None
