"""Model shapes, initialisation, spectral norm and PacGAN packing."""

import pytest
import torch
from omegaconf import OmegaConf

from conftest import from_conf, make_cfg, train
from gan_experiments.errors import UserError
from gan_experiments.models import dcgan, mlp


def dcgan_build(data_shape, is_image=True, **kwargs):
    """model=dcgan as conf/model/dcgan.yaml sets it, with `kwargs` changed."""
    return from_conf("model=dcgan", data_shape=data_shape, is_image=is_image, **kwargs)


def mlp_build(data_shape, is_image=True, **kwargs):
    return from_conf("model=mlp", data_shape=data_shape, is_image=is_image, **kwargs)


@pytest.mark.parametrize("size", [8, 14, 16, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_adapts_to_image_size_and_channels(size, channels):
    G, D = dcgan_build((channels, size, size), latent_dim=8, g_width=4, d_width=4)
    fake = G(torch.randn(2, 8))
    assert fake.shape == (2, channels, size, size)
    assert fake.abs().max() <= 1  # tanh output matches data scaled to [-1, 1]
    assert D(fake).shape == (2,)


@pytest.mark.parametrize("size", [10, 20, 30, 4, 7])
def test_dcgan_rejects_unsupported_size_with_the_fix(size):
    with pytest.raises(UserError, match="data.image_size") as error:
        dcgan_build((1, size, size))
    assert "8, 14, 16, 28, 32" in str(error.value)


def test_dcgan_rejects_point_data():
    with pytest.raises(UserError, match="model=mlp"):
        dcgan_build((2,), is_image=False)


def test_dcgan_init_is_normal_0_002():
    G, D = dcgan_build((1, 64, 64), g_width=64, d_width=64)
    weights = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    assert weights.mean().abs() < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)


def test_mlp_handles_images_and_points():
    G, D = mlp_build((1, 28, 28), is_image=True, latent_dim=16)
    assert G(torch.randn(3, 16)).shape == (3, 1, 28, 28)
    assert D(torch.randn(3, 1, 28, 28)).shape == (3,)
    G, D = mlp_build((2,), is_image=False, latent_dim=4)
    points = G(torch.randn(5, 4))
    assert points.shape == (5, 2)
    assert D(points).shape == (5,)
    # 2D outputs are not squashed into [-1, 1]: the grid reaches +-4.
    assert isinstance(G.net[-1], torch.nn.Identity)


@pytest.mark.parametrize("build,shape", [(mlp_build, (1, 8, 8)), (dcgan_build, (1, 8, 8))])
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


@pytest.mark.parametrize("build,shape", [(mlp_build, (2,)), (mlp_build, (1, 8, 8)), (dcgan_build, (3, 8, 8))])
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


# --- MLP options: paper architectures as configs ----------------------------------------


def _seed000_mlp(latent_dim, g_hidden, d_hidden, data_dim):
    """The MLP before the options existed, layer for layer."""
    g, d, width = [], [], latent_dim
    for h in g_hidden:
        g += [torch.nn.Linear(width, h), torch.nn.LeakyReLU(0.2)]
        width = h
    g += [torch.nn.Linear(width, data_dim), torch.nn.Tanh()]
    width = data_dim
    for h in d_hidden:
        d += [torch.nn.Linear(width, h), torch.nn.LeakyReLU(0.2)]
        width = h
    d.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*g), torch.nn.Sequential(*d)


def _layer_types(net):
    return [type(m) for m in net]


def test_mlp_defaults_are_seed_000s_mlp_to_the_weight():
    torch.manual_seed(0)
    G, D = mlp_build((1, 8, 8))
    torch.manual_seed(0)
    old_g, old_d = _seed000_mlp(100, [256, 512], [512, 256], 64)
    for new, old in ((G.net, old_g), (D.net, old_d)):
        assert _layer_types(new) == _layer_types(old)
        assert new.state_dict().keys() == old.state_dict().keys()  # old checkpoints still load
        assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), old.state_dict().values(), strict=True))
        assert sum(p.numel() for p in new.parameters()) == sum(p.numel() for p in old.parameters())
    assert all(m.negative_slope == 0.2 for m in G.modules() if isinstance(m, torch.nn.LeakyReLU))


@pytest.mark.parametrize("name,module", [("relu", torch.nn.ReLU), ("leaky_relu", torch.nn.LeakyReLU),
                                         ("tanh", torch.nn.Tanh), ("elu", torch.nn.ELU)])
def test_generator_activation_option(name, module):
    G, _ = mlp_build((2,), is_image=False, latent_dim=2, g_hidden=[8, 8], g_activation=name)
    assert _layer_types(G.net) == [torch.nn.Linear, module, torch.nn.Linear, module, torch.nn.Linear,
                                   torch.nn.Identity]


def test_generator_batch_norm_follows_a_bias_free_linear():
    G, _ = mlp_build((2,), is_image=False, latent_dim=2, g_hidden=[8, 8], g_norm="batch", g_activation="relu")
    block = [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU]
    assert _layer_types(G.net) == block + block + [torch.nn.Linear, torch.nn.Identity]
    hidden = [m for m in G.net[:-2] if isinstance(m, torch.nn.Linear)]
    assert all(m.bias is None for m in hidden)
    assert G.net[-2].bias is not None  # the output layer has no BatchNorm after it
    assert G(torch.randn(6, 2)).shape == (6, 2)


def test_maxout_is_a_max_over_pieces():
    layer = mlp.Maxout(3, 4, pieces=5)
    assert layer.linear.out_features == 20
    x = torch.randn(7, 3)
    out = layer(x)
    assert out.shape == (7, 4)
    pieces = layer.linear(x)
    for unit in range(4):
        expected = pieces[:, unit * 5:(unit + 1) * 5].max(dim=1).values
        assert torch.allclose(out[:, unit], expected)


def test_maxout_discriminator_layers_and_pack():
    _, D = mlp_build((2,), is_image=False, d_hidden=[200, 200, 200], d_activation="maxout",
                     d_maxout_pieces=5, pack=2)
    assert _layer_types(D.net) == [mlp.Maxout] * 3 + [torch.nn.Linear]
    assert D.net[0].linear.in_features == 4 and D.net[0].linear.out_features == 1000
    assert D.net[1].linear.in_features == 200 and D.net[-1].in_features == 200
    assert D(torch.randn(10, 2)).shape == (5,)  # one logit per packed pair


@pytest.mark.parametrize("activation,block", [("leaky_relu", [torch.nn.Linear, torch.nn.LeakyReLU]),
                                              ("maxout", [mlp.Maxout])])
def test_discriminator_dropout_follows_each_hidden_activation(activation, block):
    _, D = mlp_build((2,), is_image=False, d_hidden=[8, 8], d_activation=activation, d_dropout=0.5)
    assert _layer_types(D.net) == (block + [torch.nn.Dropout]) * 2 + [torch.nn.Linear]
    assert all(m.p == 0.5 for m in D.net if isinstance(m, torch.nn.Dropout))
    _, D = mlp_build((2,), is_image=False, d_hidden=[8, 8], d_activation=activation)
    assert not any(isinstance(m, torch.nn.Dropout) for m in D.modules())


def test_init_std_gives_normal_weights_and_zero_biases():
    G, D = mlp_build((2,), is_image=False, latent_dim=2, g_hidden=[1000, 1000], d_hidden=[200],
                     g_norm="batch", d_activation="maxout", init_std=0.02)
    big = G.net[3]  # Linear(1000, 1000): a million draws
    assert big.weight.std().item() == pytest.approx(0.02, rel=0.01)
    assert big.weight.mean().abs().item() < 1e-3
    linears = [m for net in (G, D) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5  # 3 in G, the maxout's and the logit's in D
    for m in linears:
        assert m.weight.std().item() == pytest.approx(0.02, rel=0.2)
        assert m.bias is None or not m.bias.any()
    norms = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert all(bool((m.weight == 1).all()) and not m.bias.any() for m in norms)


def test_spectral_norm_reaches_the_maxout_layers():
    _, D = mlp_build((2,), is_image=False, d_hidden=[16], d_activation="maxout", spectral_norm=True)
    assert all(torch.nn.utils.parametrize.is_parametrized(m, "weight")
               for m in D.modules() if isinstance(m, torch.nn.Linear))
    assert D(torch.randn(4, 2)).shape == (4,)


def test_mlp_rejects_impossible_maxout_or_dropout():
    with pytest.raises(UserError, match="model.d_dropout"):
        mlp_build((2,), is_image=False, d_dropout=1.0)
    with pytest.raises(UserError, match="model.d_maxout_pieces"):
        mlp_build((2,), is_image=False, d_activation="maxout", d_maxout_pieces=0)


@pytest.mark.parametrize("module, sizes, named", [
    (mlp, {"data_shape": (2,), "is_image": False, "latent_dim": -1}, "model.latent_dim=-1"),
    (mlp, {"data_shape": (2,), "is_image": False, "g_hidden": [16, 0]}, "model.g_hidden=[16, 0]"),
    (mlp, {"data_shape": (2,), "is_image": False, "d_hidden": [2.5]}, "model.d_hidden=[2.5]"),
    (dcgan, {"data_shape": (1, 28, 28), "is_image": True, "d_width": 0}, "model.d_width=0"),
])
def test_non_positive_layer_sizes_are_named_before_torch_sees_them(module, sizes, named):
    """Called from Python, past the schema's types: the builder names the bad size itself."""
    option = OmegaConf.to_container(make_cfg(f"model={module.__name__.rsplit('.', 1)[1]}").model, enum_to_str=True)
    option.pop("_target_")
    with pytest.raises(UserError, match="must be positive integers") as error:
        module.build(**option | sizes)
    assert str(error.value).startswith(named + ":")


@pytest.mark.parametrize("overrides,key", [
    (["data=ring", "model.g_norm=batch", "trainer.batch_size=1"], "G's BatchNorm"),
    (["+experiment=pacgan_ring", "model.pack=1", "trainer.batch_size=1"], "G's BatchNorm"),
])
def test_batch_norm_with_one_example_per_batch_is_one_paragraph(tmp_path, overrides, key):
    """The issue's case, and a PacGAN batch: named in one paragraph, never torch's traceback."""
    from conftest import tiny_cfg
    from gan_experiments.errors import UserError

    with pytest.raises(UserError, match=rf"trainer.batch_size=\d: {key} would normalise 1 example"):
        train(tiny_cfg(*overrides, model="mlp"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the start: nothing written


def test_dcgan_d_batch_norm_sees_packed_examples():
    from gan_experiments.errors import UserError
    from gan_experiments.models import check_batch_norm

    g, d = dcgan_build((1, 16, 16), latent_dim=4, g_width=4, d_width=4, pack=2)  # D has a BatchNorm
    check_batch_norm(g, d, batch=4, pack=2)  # 2 packed examples: fine
    with pytest.raises(UserError, match=r"D's BatchNorm would normalise 1 example \(trainer.batch_size / model.pack = 2 / 2\)"):
        check_batch_norm(g, d, batch=2, pack=2)
