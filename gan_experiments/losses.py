"""GAN losses as small pure functions of D's logits (never of probabilities: softplus keeps
log-sigmoid finite where sigmoid rounds to 0 or 1).

With D(x) = sigmoid(l):  log D = -softplus(-l)  and  log(1 - D) = -softplus(l).
Every function returns a scalar to *minimise*; the conf/loss options pair one discriminator
and one generator function.
"""

import torch
import torch.nn.functional as F

# --- the value function of Goodfellow et al. (2014) and its variants --------------------


def bce_discriminator(real_logits, fake_logits, *, real_target: float, fake_target: float):
    """-[E log D(x) + E log(1 - D(G(z)))] for targets 1 and 0 (Goodfellow et al. 2014, eq. 1);
    other targets smooth the labels (real_target=0.9 is one-sided smoothing, Salimans et al.
    2016, section 3.4; fake_target=0.1 makes it two-sided)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_target))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits, fake_target))
    return real + fake


def minimax_generator(fake_logits):
    """The saturating minimax loss: G minimises E log(1 - D(G(z))) = -E softplus(l).
    Its gradient, -sigmoid(l), vanishes when D confidently rejects the fakes."""
    return -F.softplus(fake_logits).mean()


def nonsaturating_generator(fake_logits):
    """The non-saturating loss: G maximises E log D(G(z)), i.e. minimises E softplus(-l).
    Its gradient, -sigmoid(-l), tends to -1 when D confidently rejects the fakes."""
    return F.softplus(-fake_logits).mean()


# --- the wider family --------------------------------------------------------------------


def hinge_discriminator(real_logits, fake_logits):
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator(fake_logits):
    return -fake_logits.mean()


def lsgan_discriminator(real_logits, fake_logits):
    return 0.5 * (real_logits - 1.0).pow(2).mean() + 0.5 * fake_logits.pow(2).mean()


def lsgan_generator(fake_logits):
    return 0.5 * (fake_logits - 1.0).pow(2).mean()


def wasserstein_discriminator(real_logits, fake_logits):
    """The critic's side of the Kantorovich-Rubinstein dual: maximise E f(x) - E f(G(z))."""
    return fake_logits.mean() - real_logits.mean()


def wasserstein_generator(fake_logits):
    return -fake_logits.mean()


# --- gradient penalties ------------------------------------------------------------------
# One signature, (discriminator, real, fake, *, pack, grad_scale, weight), so conf/loss/penalty
# chooses one like any other loss. Each returns `weight` times its penalty, a scalar to add to
# D's loss. D judges packs of `pack` consecutive samples (PacGAN), so the gradient norms are
# taken per pack. PyTorch's AMP recipe for gradient penalties: `discriminator` runs its forward
# under autocast where the run uses it, while the penalty calls torch.autograd.grad outside
# autocast; `grad_scale`: with fp16 the output is scaled before the input gradient and the
# gradient unscaled after it, so fp16 does not underflow it; 1 otherwise.


def _input_gradient(outputs, inputs, grad_scale):
    """d(sum outputs)/d(inputs), kept in the graph for D's backward. The sum is taken in fp32:
    in fp16, 64 logits times a loss scale of 2^16 overflow."""
    (grad,) = torch.autograd.grad(outputs.float().sum() * grad_scale, inputs, create_graph=True)
    return grad / grad_scale


def wgan_gradient_penalty(discriminator, real, fake, *, pack: int, grad_scale, weight: float):
    """lambda E (||grad_x D(x_hat)||_2 - 1)^2 at x_hat on straight lines between real and fake
    samples (Gulrajani et al. 2017, eq. 3, lambda = `weight`). Each pack gets one mixing
    coefficient and one gradient norm over all of its samples."""
    packs = real.shape[0] // pack
    alpha = torch.rand((packs,) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
    alpha = alpha.repeat_interleave(pack, dim=0)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    grad = _input_gradient(discriminator(mixed), mixed, grad_scale)
    return weight * (grad.reshape(packs, -1).norm(dim=1) - 1.0).pow(2).mean()


def r1_penalty(discriminator, real, fake, *, pack: int, grad_scale, weight: float):
    """(gamma / 2) E ||grad_x D(x)||_2^2 on real data (Mescheder et al. 2018, eq. 9, gamma =
    `weight`), from a pass of D of its own on the real batch, as StyleGAN2 takes it. `fake` is
    unused."""
    real = real.detach().requires_grad_(True)
    grad = _input_gradient(discriminator(real), real, grad_scale)
    return weight * 0.5 * grad.reshape(real.shape[0] // pack, -1).pow(2).sum(dim=1).mean()
