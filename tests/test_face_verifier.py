"""The face verifier experiment (panini_models.face_verifier): its input, its training
loop and its weight file. It is not used by any command; scripts/train_verifier.py
measures it (benchmarks/results/detect_default.md).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from panini_cli import detectors as D                                          # noqa: E402
from panini_models.checkpoints import CheckpointError, read_weights, save_weights   # noqa: E402
from panini_models.face_verifier import (CROP, FaceVerifier, load_verifier,    # noqa: E402
                                         save_verifier, standardise, train_verifier)


def test_standardise_ignores_brightness_and_contrast_up_to_scale():
    rng = np.random.default_rng(0)
    x = rng.integers(40, 200, (2, CROP, CROP, 3)).astype(np.uint8)
    faded = np.clip(x.astype(float) * 0.5 + 60, 0, 255).astype(np.uint8)
    a, b = standardise(x), standardise(faded)
    assert a.shape == (2, 3, CROP, CROP)
    cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))
    assert (cos > 0.999).all() and abs(float(a.mean())) < 1e-4        # the same up to a scale (the +8 floor)


def test_training_learns_a_separable_task_and_the_file_round_trips(tmp_path):
    """Bright discs on noise (1) against noise (0): a few epochs must separate them, and
    the saved file must give the same logits."""
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 120, (160, CROP, CROP, 3)).astype(np.uint8)
    labels = np.arange(160) % 2
    for i in np.flatnonzero(labels == 1):
        cv2.circle(crops[i], (24, 24), 10, (255, 255, 255), -1)
    torch.manual_seed(0)
    path = tmp_path / "v.safetensors"
    train_verifier(crops, labels.astype(np.uint8), path, epochs=6, batch=32, log=lambda s: None)
    net = load_verifier(path)
    lg = net.logits(crops)
    assert (lg[labels == 1].min() > lg[labels == 0].max()), (lg[labels == 1].min(), lg[labels == 0].max())
    assert np.allclose(load_verifier(path).logits(crops[:4]), lg[:4])


def test_a_wrong_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a face verifier"):
        load_verifier(D._bundled("degraded")[0])                # the detector's weights
    p = tmp_path / "w.safetensors"
    save_verifier(p, FaceVerifier(width=8), {})
    kind, config, sd, _ = read_weights(p)
    sd.pop(next(iter(sd)))
    save_weights(p, sd, kind, config)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_verifier(p)
