"""Panini-Net's forward contract: variants, masks, theta, bias, Eq. 12/13 switches, training."""
import dataclasses

import pytest
import torch

from panini_models.panini import PRESETS, PaniniConfig, PaniniNet
from panini_models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

TINY = dataclasses.replace(PRESETS["small"], channel_base=2048, channel_max=32, style_dim=64, n_mlp=2,
                           rrdb_channels=8, rrdb_growth=8, latent_hidden=16, dr_dim=32,
                           dre_channels=(8, 8, 16, 16, 32, 32), mask_hidden=32)


def tiny(variant="mfr", **kw):
    torch.manual_seed(0)
    return PaniniNet(dataclasses.replace(TINY, variant=variant, **kw)).eval()


def inputs(n=2, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_official_presets_have_the_official_parameter_counts():
    # counts from ../shared/reference/README.md ("Parameters")
    for name, total in [("mfr", 94_339_836), ("sr", 108_847_096)]:
        with torch.device("meta"):
            model = PaniniNet(name)
        assert sum(p.numel() for p in model.parameters()) == total, name
    with torch.device("meta"):
        assert sum(p.numel() for p in StyleGAN2Generator(1024).parameters()) == 30_370_060
        assert sum(p.numel() for p in StyleGAN2Discriminator(1024).parameters()) == 29_012_513


@pytest.mark.parametrize("variant", ["mfr", "sr", "catconv"])
def test_variants_forward(variant):
    model = tiny(variant)
    with torch.inference_mode():
        out = model(inputs(), return_aux=True)
    assert out.image.shape == (2, 3, 128, 128) and torch.isfinite(out.image).all()
    assert out.latent.shape == (2, model.stylegan.num_latents, TINY.style_dim)
    if variant == "catconv":
        assert out.vdr is None and out.mask_gan == []
    else:
        assert len(out.mask_gan) == 5
        assert out.vdr.shape == (2, TINY.dr_dim)
    if variant == "sr":   # a learned constant vector: the same vDR and masks for every input
        assert torch.equal(out.vdr[0], out.vdr[1]) and torch.equal(out.mask_gan[4][0], out.mask_gan[4][1])


def test_masks_are_a_softmax_pair_and_theta_is_their_mean():
    model = tiny()
    with torch.inference_mode():
        out = model(inputs(), return_aux=True)
    for g, i in zip(out.mask_gan, out.mask_img):
        torch.testing.assert_close(g + i, torch.ones_like(g))
        assert (g > 0).all() and (g < 1).all()
    assert torch.equal(out.theta, out.mask_gan[-1].mean(1))
    assert out.thetas.shape == (2, 5)
    torch.testing.assert_close(out.thetas[:, 2], out.mask_gan[2].mean(1))
    # the masks depend on the degradation vector, so two different inputs get different masks
    assert not torch.equal(out.mask_gan[4][0], out.mask_gan[4][1])


def test_zero_bias_is_exactly_the_plain_forward():
    model, x = tiny(), inputs()
    with torch.inference_mode():
        assert torch.equal(model(x), model(x, mask_bias=0.0))
        assert torch.equal(model(x), model(x, mask_bias=[0.0] * 5, blocks=[1, 3]))


def test_given_vdr_is_used_instead_of_the_dre():
    """forward(x, vdr=degradation_vector(x)) is exactly forward(x); another vDR changes the masks
    (and only through them); sr and catconv refuse one."""
    model, x = tiny(), inputs()
    with torch.inference_mode():
        plain = model(x, return_aux=True)
        given = model(x, vdr=model.degradation_vector(x), return_aux=True)
        assert torch.equal(plain.image, given.image) and torch.equal(plain.vdr, given.vdr)
        for a, b in zip(plain.mask_gan, given.mask_gan):
            assert torch.equal(a, b)
        swapped = model(x, vdr=plain.vdr.flip(0), return_aux=True)    # each face gets the other's vDR
        assert torch.equal(swapped.vdr, plain.vdr.flip(0)) and torch.equal(swapped.latent, plain.latent)
        assert not torch.equal(swapped.mask_gan[4], plain.mask_gan[4])
        assert not torch.equal(swapped.image, plain.image)
        with pytest.raises(ValueError, match=r"vdr must be \(2, 32\)"):
            model(x, vdr=plain.vdr[:1])
        for variant in ("sr", "catconv"):
            with pytest.raises(ValueError, match="cannot take a given vdr"):
                tiny(variant)(x, vdr=plain.vdr)


def test_bias_moves_output_monotonically_towards_the_bias_one_output():
    model, x = tiny(), inputs(1)
    with torch.inference_mode():
        far = model(x, mask_bias=1.0)
        dists = [float((model(x, mask_bias=b) - far).abs().mean())
                 for b in (-1.0, -0.5, -0.2, 0.0, 0.1, 0.2, 0.4, 1.0)]
        out = model(x, mask_bias=0.3, return_aux=True)
    # strictly shrinking until every mask saturates at 1, then exactly the bias-1 output
    assert all(a > b or a == b == 0.0 for a, b in zip(dists, dists[1:])), dists
    assert dists[3] > 0.0 and dists[-1] == 0.0
    for g, i in zip(out.mask_gan, out.mask_img):
        assert float(g.min()) >= 0.3 - 1e-6 or float(g.max()) == 1.0
        torch.testing.assert_close(g + i, torch.ones_like(g))


def test_bias_only_on_chosen_blocks():
    model, x = tiny(), inputs(1)
    with torch.inference_mode():
        plain = model(x, return_aux=True)
        biased = model(x, mask_bias=0.2, blocks=[5], return_aux=True)
    for k in range(4):
        assert torch.equal(plain.mask_gan[k], biased.mask_gan[k])
    torch.testing.assert_close(biased.mask_gan[4], (plain.mask_gan[4] + 0.2).clamp(0, 1))
    with pytest.raises(ValueError, match="numbered 1..5"):
        model(x, mask_bias=0.2, blocks=[6])


def test_eq12_eq13_switches():
    """Y_IFE (GAN features zeroed) and Y_GPB (image features zeroed) differ from Y and each other;
    at bias -1 (all image side) zeroing the GAN side changes nothing."""
    model, x = tiny(), inputs(1)
    with torch.inference_mode():
        y = model(x)
        y_ife = model(x, zero_gan=True)
        y_gpb = model(x, zero_img=True)
        assert not torch.equal(y, y_ife) and not torch.equal(y, y_gpb) and not torch.equal(y_ife, y_gpb)
        torch.testing.assert_close(model(x, mask_bias=-1.0), model(x, mask_bias=-1.0, zero_gan=True))
        torch.testing.assert_close(model(x, mask_bias=1.0), model(x, mask_bias=1.0, zero_img=True))


def test_bad_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"input must be \(B, 3, 64, 64\)"):
        tiny()(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="variant"):
        PaniniConfig(variant="gfpgan")


def test_stylegan2_sizes_and_discriminator():
    for size in (64, 128, 256):
        g = StyleGAN2Generator(size, 32, 2, channel_base=size * 8, channel_max=32)
        d = StyleGAN2Discriminator(size, channel_base=size * 8, channel_max=32)
        img = g(torch.randn(3, 32))
        assert img.shape == (3, 3, size, size)
        assert d(img).shape == (3, 1)
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Generator(96)


def _train(seed: int, steps: int) -> list[float]:
    torch.manual_seed(seed)
    model = PaniniNet(TINY).train()
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1       # smooth targets a small net can fit
    hq = torch.nn.functional.interpolate(coarse, size=128, mode="bilinear", align_corners=False)
    lq = torch.nn.functional.avg_pool2d(hq, 2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.99))
    losses = []
    for _ in range(steps):
        loss = (model(lq) - hq).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_small_config_trains_and_is_deterministic():
    a = _train(0, 25)
    assert sum(a[-5:]) / 5 < 0.7 * sum(a[:5]) / 5, a
    assert a == _train(0, 25)
    assert a != _train(1, 25)
