"""Model shapes, initialisation, spectral norm and PacGAN packing."""

import pytest
import torch

from gan_experiments.errors import UserError
from gan_experiments.models import dcgan, mlp


@pytest.mark.parametrize("size", [8, 14, 16, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_adapts_to_image_size_and_channels(size, channels):
    G, D = dcgan.build((channels, size, size), latent_dim=8, g_width=4, d_width=4)
    fake = G(torch.randn(2, 8))
    assert fake.shape == (2, channels, size, size)
    assert fake.abs().max() <= 1  # tanh output matches data scaled to [-1, 1]
    assert D(fake).shape == (2,)


@pytest.mark.parametrize("size", [10, 20, 30, 4, 7])
def test_dcgan_rejects_unsupported_size_with_the_fix(size):
    with pytest.raises(UserError, match="data.image_size") as error:
        dcgan.build((1, size, size))
    assert "8, 14, 16, 28, 32" in str(error.value)


def test_dcgan_rejects_point_data():
    with pytest.raises(UserError, match="model=mlp"):
        dcgan.build((2,), is_image=False)


def test_dcgan_init_is_normal_0_002():
    G, D = dcgan.build((1, 64, 64), g_width=64, d_width=64)
    weights = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    assert weights.mean().abs() < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)


def test_mlp_handles_images_and_points():
    G, D = mlp.build((1, 28, 28), is_image=True, latent_dim=16)
    assert G(torch.randn(3, 16)).shape == (3, 1, 28, 28)
    assert D(torch.randn(3, 1, 28, 28)).shape == (3,)
    G, D = mlp.build((2,), is_image=False, latent_dim=4)
    points = G(torch.randn(5, 4))
    assert points.shape == (5, 2)
    assert D(points).shape == (5,)
    # 2D outputs are not squashed into [-1, 1]: the grid reaches +-4.
    assert isinstance(G.net[-1], torch.nn.Identity)


@pytest.mark.parametrize("build,shape", [(mlp.build, (1, 8, 8)), (dcgan.build, (1, 8, 8))])
def test_spectral_norm_bounds_the_largest_singular_value(build, shape):
    G, D = build(shape, spectral_norm=True)
    D.train()
    for _ in range(30):  # power iterations run on each training-mode forward
        D(torch.randn(4, *shape))
    D.eval()
    for module in D.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            sigma = torch.linalg.matrix_norm(module.weight.flatten(1), ord=2)
            assert sigma.item() == pytest.approx(1.0, abs=0.05)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())


@pytest.mark.parametrize("build,shape", [(mlp.build, (2,)), (mlp.build, (1, 8, 8)), (dcgan.build, (3, 8, 8))])
def test_packed_discriminator_sees_pack_samples_at_once(build, shape):
    _, D = build(shape, is_image=len(shape) == 3, pack=4)
    first = next(m for m in D.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    if isinstance(first, torch.nn.Linear):
        assert first.in_features == 4 * torch.Size(shape).numel()
    else:
        assert first.in_channels == 4 * shape[0]
    assert D(torch.randn(16, *shape)).shape == (4,)
    with pytest.raises(UserError, match="model.pack"):
        D(torch.randn(6, *shape))
