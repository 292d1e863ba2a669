"""The oneDNN fused convolutions against plain conv2d + elementwise ops."""
import pytest
import torch
import torch.nn.functional as F

from panini_models import fused

pytestmark = pytest.mark.skipif(not fused.AVAILABLE, reason="this torch build has no oneDNN fused conv ops")

SHAPES = [(1, 8, 32, 23, 17, 3), (2, 32, 8, 16, 16, 3), (3, 5, 7, 9, 11, 1), (1, 64, 64, 12, 12, 3)]


def _inputs(b, cin, cout, h, w, k, channels_last):
    g = torch.Generator().manual_seed(b * 1000 + cin + cout)
    x = torch.randn(b, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
    bias = torch.randn(cout, generator=g)
    if channels_last:
        cl = torch.channels_last
        x, weight = x.contiguous(memory_format=cl), weight.contiguous(memory_format=cl)
    return x, weight, bias


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("slope", [None, 0.2])
def test_conv_act(shape, channels_last, slope):
    x, weight, bias = _inputs(*shape, channels_last)
    pad = shape[-1] // 2
    ref = F.conv2d(x, weight, bias, padding=pad)
    if slope is not None:
        ref = F.leaky_relu(ref, slope)
    with torch.inference_mode():
        out = fused.conv_act(x, weight, bias, pad, slope)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_conv_add_in_place(shape, channels_last):
    x, weight, bias = _inputs(*shape, channels_last)
    pad = shape[-1] // 2
    with torch.inference_mode():
        acc = fused.conv_act(x, weight, bias, pad)     # an accumulator in the layout oneDNN gives
        start = acc.clone()
        out = fused.conv_add_(acc, x * 0.5, weight, pad)
    assert out.data_ptr() == acc.data_ptr()
    torch.testing.assert_close(acc, start + F.conv2d(x * 0.5, weight, padding=pad), rtol=1e-5, atol=1e-5)


def test_self_check_turns_the_path_off_when_an_op_misbehaves(monkeypatch):
    """A torch build whose internal op computes something else (or has another signature)
    must lose the fused path, not change the forward."""
    assert fused._self_check()
    monkeypatch.setattr(fused, "conv_add_", lambda acc, x, w, pad: acc)              # adds nothing
    assert not fused._self_check()

    def other_signature(*args):
        raise RuntimeError("schema mismatch")
    monkeypatch.setattr(fused, "conv_act", other_signature)
    assert not fused._self_check()
