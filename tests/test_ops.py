"""Each fast op against its plain reference, on random inputs of many shapes (float64)."""
import itertools

import pytest
import torch

from panini_models.ops import (bias_act, fir_kernel, modulated_conv2d, modulated_conv2d_ref,
                               upfirdn2d, upfirdn2d_ref)

torch.manual_seed(0)


@pytest.mark.parametrize("shape,up,down,pad", [
    ((1, 1, 5, 5), 1, 1, (1, 1)),          # the blur after a transposed conv
    ((2, 3, 8, 8), 1, 1, (2, 2)),          # the discriminator's blur before a 3x3 stride-2 conv
    ((3, 4, 7, 9), 1, 1, (2, 1)),          # asymmetric pad
    ((2, 5, 6, 6), 2, 1, (2, 1)),          # the ToRGB skip upsampling
    ((1, 2, 16, 16), 1, 2, (1, 1)),        # blur + decimation
    ((2, 2, 5, 7), 2, 1, (1, 1)),          # a case the fast path hands to the reference
    ((1, 3, 9, 9), 1, 1, (0, 0)),
])
def test_upfirdn2d_matches_reference(shape, up, down, pad):
    x = torch.randn(shape, dtype=torch.float64)
    k = fir_kernel(dtype=torch.float64) * (up * up)
    fast, ref = upfirdn2d(x, k, up, down, pad), upfirdn2d_ref(x, k, up, down, pad)
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)


def test_upfirdn2d_reference_definition():
    """The reference itself: an impulse through up=2 + FIR reproduces the kernel taps."""
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    x[0, 0, 1, 1] = 1.0
    k = torch.arange(16, dtype=torch.float64).view(4, 4)    # not symmetric: checks the flip
    y = upfirdn2d_ref(x, k, up=2, pad=(2, 1))
    assert y.shape == (1, 1, 6, 6)
    nz = y[0, 0][y[0, 0] != 0]
    assert sorted(nz.tolist()) == sorted(k.flatten()[1:].tolist())   # tap 0 falls on the border


@pytest.mark.parametrize("batch,up,demod,fused", list(itertools.product([1, 3], [False, True], [True, False],
                                                                         [None, True, False])))
def test_modulated_conv_matches_reference(batch, up, demod, fused):
    x = torch.randn(batch, 6, 8, 8, dtype=torch.float64)
    k = 1 if not (up or demod) else 3          # the 1x1 ToRGB case, else 3x3
    w = torch.randn(5, 6, k, k, dtype=torch.float64)
    s = torch.randn(batch, 6, dtype=torch.float64) + 1
    blur = fir_kernel(dtype=torch.float64)
    ref = modulated_conv2d_ref(x, w, s, demod, up, blur)
    fast = modulated_conv2d(x, w, s, demod, up, blur, fused=fused)
    assert fast.shape == ref.shape == (batch, 5, 16 if up else 8, 16 if up else 8)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


def test_reference_modconv_is_textbook():
    """The reference against a per-sample loop: scale weights by the style, give each
    output filter unit L2 norm, run an ordinary conv."""
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    s = torch.rand(2, 3, dtype=torch.float64) * 5
    ref = modulated_conv2d_ref(x, w, s, demodulate=True)
    for b in range(2):
        wb = w * s[b].view(1, 3, 1, 1)
        wb = wb / wb.flatten(1).norm(dim=1).view(4, 1, 1, 1)
        expected = torch.nn.functional.conv2d(x[b:b + 1], wb, padding=1)
        torch.testing.assert_close(ref[b:b + 1], expected, rtol=1e-7, atol=1e-7)


def test_bias_act():
    x = torch.tensor([[-1.0, 2.0]]).view(1, 2, 1, 1)
    b = torch.tensor([0.5, -1.0])
    y = bias_act(x, b).flatten().tolist()
    assert y == pytest.approx([-0.5 * 0.2 * 2 ** 0.5, 1.0 * 2 ** 0.5])


@pytest.mark.parametrize("up", [False, True])
def test_channels_last_survives_batch_one_modulated_conv(up):
    """A channels_last input stays channels_last through a styled conv at batch 1 (the fast
    path's per-sample weights): else every next conv and blur converts a large map to NCHW."""
    from panini_models.stylegan2 import StyledConv
    torch.manual_seed(0)
    layer = StyledConv(16, 8, 32, up=up).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        y = layer(x, torch.randn(1, 32), torch.randn(1, 1, 24 if up else 12, 24 if up else 12))
    assert y.is_contiguous(memory_format=torch.channels_last)
    # the layout as strides say it (size-1 dims included), which is what a conv reads
    assert y.stride() == torch.empty_like(y, memory_format=torch.channels_last).stride()
