"""The fast dense block (stacked weights, no concatenation) against the textbook form."""
import pytest
import torch

from panini_models import fused
from panini_models.ife import ResidualDenseBlock


@pytest.mark.parametrize("ch,growth,batch,channels_last", [(8, 32, 1, False), (8, 32, 2, True), (64, 32, 1, True),
                                                           (5, 3, 3, False)])
def test_dense_block_matches_reference(ch, growth, batch, channels_last):
    torch.manual_seed(0)
    block = ResidualDenseBlock(ch, growth).double()
    x = torch.randn(batch, ch, 11, 13, dtype=torch.float64)
    if channels_last:
        block, x = block.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(block(x), block.forward_ref(x), rtol=1e-10, atol=1e-10)


def test_dense_block_gradients_match_reference():
    torch.manual_seed(0)
    block = ResidualDenseBlock(4, 6).double()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    fast = torch.autograd.grad(block(x).square().sum(), [x, block.conv3.weight])
    ref = torch.autograd.grad(block.forward_ref(x).square().sum(), [x, block.conv3.weight])
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


needs_onednn = pytest.mark.skipif(not fused.AVAILABLE, reason="this torch build has no oneDNN fused conv ops")


@needs_onednn
@pytest.mark.parametrize("ch,growth,batch,channels_last", [(8, 32, 1, True), (8, 32, 2, True), (8, 32, 1, False),
                                                           (16, 16, 3, True), (5, 3, 2, False)])
def test_fused_dense_block_matches_reference(ch, growth, batch, channels_last):
    torch.manual_seed(0)
    block = ResidualDenseBlock(ch, growth)
    x = torch.randn(batch, ch, 19, 17)
    if channels_last:
        block, x = block.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert fused.usable(x, block.conv1.weight)
        fast = block.forward_fused(x)
        ref = block.forward_ref(x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert fast.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_fused_path_only_where_it_applies():
    """Training, autocast, float64 and non-fp32 weights take the stacked path (the fused ops have no autograd)."""
    x, w = torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3)
    assert not fused.usable(x, w)                   # grad mode on
    with torch.no_grad():
        assert fused.usable(x, w) == fused.AVAILABLE
        assert not fused.usable(x.double(), w)
        assert not fused.usable(x, w.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fused.usable(x, w)
