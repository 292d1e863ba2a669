"""Training for Panini-Net: UDRL pre-training of the DRE, restoration fine-tuning, a small
StyleGAN2 prior, and the pieces they share (data, losses, checkpoints, distribution).

Modules (one job each):
  state.py    config dataclasses, JSON/TOML files + key=value overrides, atomic checkpoints, RNG state
  dist.py     torchrun environment, gradient averaging, the distributed sampler
  data.py     face folders, on-the-fly Eq. 10 degradation, UDRL pairs, resumable batches
  losses.py   L1, VGG16 perceptual (from a user file), discriminator feature matching, GAN losses
  metrics.py  PSNR and SSIM (validation and `panini evaluate`)
  runner.py   the driver every trainer shares: signals, logging, checkpoints, NaN stop, export
  udrl.py     MoCo around the DRE (paper Fig. 2, Eq. 4)
  loop.py     restoration fine-tuning (GLEAN/SRGAN-style G and D steps, EMA, AMP, accumulation)
  prior.py    a short StyleGAN2 pre-training (non-saturating loss + lazy R1) for small sizes
  api.py      start() a run (CLI, tests, torchrun workers) and export a checkpoint's weights

Nothing here is imported by inference code, so `panini restore` never pays for it.
"""
