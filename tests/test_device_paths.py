"""The CPU side of the CUDA paths: what tests/test_cuda.py checks on a GPU, computed here on the CPU
where the same code can run (the uint8 <-> tensor conversions that run on the GPU)."""
import numpy as np
import torch

from panini_models import tensors


def test_uint8_conversions_in_torch_give_the_numpy_bits():
    """bgr_to_tensor / tensor_to_bgr on a CUDA device use tensors._normalise / _to_uint8; on the CPU
    they must equal the NumPy path bit for bit (every uint8 value; outputs on the rounding ties)."""
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    crops[1].reshape(-1)[:256] = np.arange(256, dtype=np.uint8)
    ref = tensors.bgr_to_tensor(crops)
    got = tensors._normalise(torch.from_numpy(np.stack(crops)))
    assert got.dtype == ref.dtype and got.shape == ref.shape and got.is_contiguous()
    assert torch.equal(got, ref)
    y = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2.4 - 1.2
    ties = (torch.arange(256.0) + 0.5) / 255 * 2 - 1        # k + 0.5 levels: round half to even
    y.view(-1)[:256] = ties
    ref = tensors.tensor_to_bgr(y)
    got = list(tensors._to_uint8(y))
    assert len(got) == 2 and all(np.array_equal(a, b) and a.flags.c_contiguous for a, b in zip(got, ref))
