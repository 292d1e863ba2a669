"""The fast dense block (stacked weights, no concatenation) against the textbook form."""
import pytest
import torch

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
