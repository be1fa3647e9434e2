"""Loss values and gradients against hand computation."""

import math

import pytest
import torch

from gan_experiments import losses

PLAIN = {"real_target": 1.0, "fake_target": 0.0}  # conf/loss/bce.yaml's targets
UNIT = {"pack": 1, "grad_scale": 1.0, "weight": 1.0}  # the bare penalty: one sample per pack, no fp16, weight 1


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_bce_discriminator_is_the_negated_value_function():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    expected = -sum(math.log(sigmoid(r)) for r in [2.0, -1.0]) / 2 - sum(
        math.log(1 - sigmoid(f)) for f in [0.5, -3.0]) / 2
    assert losses.bce_discriminator(real, fake, **PLAIN).item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_targets():
    real, fake = torch.tensor([1.5]), torch.tensor([-0.5])
    p, q = sigmoid(1.5), sigmoid(-0.5)
    expected = -(0.9 * math.log(p) + 0.1 * math.log(1 - p)) - (0.1 * math.log(q) + 0.9 * math.log(1 - q))
    value = losses.bce_discriminator(real, fake, real_target=0.9, fake_target=0.1)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_generator_loss_values():
    fake = torch.tensor([0.3, -2.0])
    minimax = sum(math.log(1 - sigmoid(f)) for f in [0.3, -2.0]) / 2
    nonsat = -sum(math.log(sigmoid(f)) for f in [0.3, -2.0]) / 2
    assert losses.minimax_generator(fake).item() == pytest.approx(minimax, rel=1e-6)
    assert losses.nonsaturating_generator(fake).item() == pytest.approx(nonsat, rel=1e-6)


def _grad(fn, logit):
    x = torch.tensor([logit], requires_grad=True)
    fn(x).backward()
    return x.grad.item()


@pytest.mark.parametrize("logit", [-20.0, -5.0, 0.0, 3.0])
def test_generator_gradients_match_hand_derivation(logit):
    # d/dl log(1 - sigmoid(l)) = -sigmoid(l);  d/dl -log sigmoid(l) = -(1 - sigmoid(l))
    assert _grad(losses.minimax_generator, logit) == pytest.approx(-sigmoid(logit), abs=1e-7)
    assert _grad(losses.nonsaturating_generator, logit) == pytest.approx(-(1 - sigmoid(logit)), abs=1e-7)


def test_saturating_gradient_vanishes_where_non_saturating_does_not():
    # D confidently rejects the fakes: D(G(z)) = sigmoid(-20) ~ 2e-9.
    assert abs(_grad(losses.minimax_generator, -20.0)) < 1e-8
    assert abs(_grad(losses.nonsaturating_generator, -20.0)) > 0.99


def test_losses_stay_finite_for_extreme_logits():
    extreme = torch.tensor([-1e4, 1e4])
    for value in (losses.bce_discriminator(extreme, extreme, **PLAIN), losses.minimax_generator(extreme),
                  losses.nonsaturating_generator(extreme)):
        assert torch.isfinite(value)


def test_hinge_lsgan_wasserstein_values():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-0.5, 0.25])
    assert losses.hinge_discriminator(real, fake).item() == pytest.approx((0.5 + 0) / 2 + (0.5 + 1.25) / 2)
    assert losses.hinge_generator(fake).item() == pytest.approx(0.125)
    assert losses.lsgan_discriminator(real, fake).item() == pytest.approx(
        0.5 * (0.25 + 1.0) / 2 + 0.5 * (0.25 + 0.0625) / 2)
    assert losses.lsgan_generator(fake).item() == pytest.approx(0.5 * (2.25 + 0.5625) / 2)
    assert losses.wasserstein_discriminator(real, fake).item() == pytest.approx(-0.125 - 1.25)
    assert losses.wasserstein_generator(fake).item() == pytest.approx(0.125)


def test_wgan_gradient_penalty_on_a_linear_critic():
    # D(x) = w.x has gradient w everywhere, so the penalty is (|w| - 1)^2 exactly.
    w = torch.tensor([3.0, 4.0])
    critic = lambda x: x @ w  # noqa: E731
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    assert losses.wgan_gradient_penalty(critic, real, fake, **UNIT).item() == pytest.approx(16.0)
    # the weight is lambda of Gulrajani et al.'s eq. 3
    assert losses.wgan_gradient_penalty(critic, real, fake, **(UNIT | {"weight": 10.0})).item() == pytest.approx(160.0)


def test_wgan_gradient_penalty_mixes_per_example_not_per_pixel():
    # D(x) = sum(x^2) / 2 has gradient x: at x_hat = a*real + (1-a)*fake with one a per
    # example, |x_hat| of a zero fake and real of norm 2 is 2a, so the penalty lies in [0, 1].
    torch.manual_seed(0)
    real = torch.zeros(256, 1, 4, 4)
    real[:, 0, 0, 0] = 2.0
    fake = torch.zeros_like(real)
    seen = []
    critic = lambda x: seen.append(x.detach()) or 0.5 * x.pow(2).flatten(1).sum(1)  # noqa: E731
    penalty = losses.wgan_gradient_penalty(critic, real, fake, **UNIT)
    alpha = seen[0][:, 0, 0, 0] / 2
    assert (seen[0][:, :, 1:, :] == 0).all()
    assert penalty.item() == pytest.approx(((2 * alpha - 1) ** 2).mean().item(), rel=1e-5)


def test_r1_penalty_on_a_quadratic_critic():
    # D(x) = |x|^2 has gradient 2x, so R1 = (gamma / 2) E |2x|^2 = 2 gamma E |x|^2.
    real = torch.randn(32, 3)
    critic = lambda x: x.pow(2).sum(1)  # noqa: E731
    expected = 2 * real.pow(2).sum(1).mean().item()
    assert losses.r1_penalty(critic, real, None, **UNIT).item() == pytest.approx(expected, rel=1e-5)
    assert losses.r1_penalty(critic, real, None, **(UNIT | {"weight": 0.1})).item() == pytest.approx(
        0.1 * expected, rel=1e-5)
    assert not real.requires_grad  # the batch D's loss sees is left as it was


class PackedLinearCritic(torch.nn.Module):
    """D(pack) = w . (the pack's samples, concatenated), with ||w|| = 1: exactly 1-Lipschitz
    in its packed input, as PacGAN's D sees it, but not in any one sample."""

    def __init__(self, sample_dim: int, pack: int):
        super().__init__()
        self.pack = pack
        w = torch.randn(sample_dim * pack, generator=torch.Generator().manual_seed(0))
        self.w = w / w.norm()

    def forward(self, x):
        return x.reshape(x.shape[0] // self.pack, -1) @ self.w


@pytest.mark.parametrize("pack", [1, 2, 4])
def test_penalties_are_taken_per_pack(pack):
    critic = PackedLinearCritic(sample_dim=3, pack=pack)
    real, fake = torch.randn(8, 3), torch.randn(8, 3)
    per_pack = UNIT | {"pack": pack}
    assert losses.wgan_gradient_penalty(critic, real, fake, **per_pack).item() == pytest.approx(0.0, abs=1e-10)
    assert losses.r1_penalty(critic, real, fake, **per_pack).item() == pytest.approx(0.5)


def test_penalties_take_scaled_gradients_and_unscale_them():
    """PyTorch's AMP recipe: the gradient of the scaled output, divided by the scale, is the
    penalty's gradient; with a scale of 2**16 the value must not change."""
    critic = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    real, fake = torch.randn(8, 3), torch.randn(8, 3)
    scale = torch.tensor(2.0**16)
    torch.manual_seed(1)
    plain = losses.wgan_gradient_penalty(critic, real, fake, **UNIT)
    torch.manual_seed(1)
    scaled = losses.wgan_gradient_penalty(critic, real, fake, **(UNIT | {"grad_scale": scale}))
    assert scaled.item() == pytest.approx(plain.item(), rel=1e-5)
    assert losses.r1_penalty(critic, real, fake, **(UNIT | {"grad_scale": scale})).item() == pytest.approx(
        losses.r1_penalty(critic, real, fake, **UNIT).item(), rel=1e-5)
