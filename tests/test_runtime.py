"""Precision and memory-format handling: fp32 exact, bf16 close, fp16 refused on CPU."""
import dataclasses

import pytest
import torch

from panini_models import runtime
from panini_models.panini import PRESETS, PaniniNet

CFG = dataclasses.replace(PRESETS["small"], channel_base=2048, channel_max=32)


def _model():
    torch.manual_seed(0)
    return PaniniNet(CFG)


def test_channels_last_fp32_matches_plain():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    plain = runtime.forward(runtime.prepare(_model(), channels_last=False), x)
    fast = runtime.forward(runtime.prepare(_model(), channels_last=True), x)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert fast.dtype == torch.float32


def test_bf16_is_close_but_not_exact():
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    ref = runtime.forward(runtime.prepare(_model()), x)
    out = runtime.forward(runtime.prepare(_model(), precision="bf16"), x, precision="bf16", return_aux=True)
    assert out.image.dtype == torch.float32
    err = float((out.image - ref).abs().max())
    assert 0 < err < 0.25 * float(ref.abs().max())


def test_precision_checks():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        runtime.prepare(_model(), "cpu", "fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.check_precision("cpu", "int8")
