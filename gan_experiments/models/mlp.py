"""Fully connected G and D, for flattened images and for 2D points.

The defaults are seed 000's MLP (LeakyReLU 0.2, torch's default init). The options make the
paper MLPs configs rather than code: PacGAN's 2D networks (Lin et al. 2018) are
`g_norm=batch g_activation=relu d_activation=maxout init_std=0.02`, Goodfellow et al.'s maxout
D with dropout adds `d_dropout`."""

import math

import torch
import torch.nn as nn

from gan_experiments.errors import UserError
from gan_experiments.models import add_spectral_norm, check_pack, check_sizes

G_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "tanh": nn.Tanh,
    "elu": nn.ELU,
}


def _name(option) -> str:
    """Hydra hands the schema's Enum members through; plain Python callers pass strings."""
    return getattr(option, "value", option)


class Maxout(nn.Module):
    """Maxout layer (Goodfellow et al. 2013): `pieces` affine maps per unit, keep the largest.
    Pieces of one unit are adjacent in the Linear's output, as in Blocks' LinearMaxout."""

    def __init__(self, in_features: int, out_features: int, pieces: int):
        super().__init__()
        self.out_features, self.pieces = out_features, pieces
        self.linear = nn.Linear(in_features, out_features * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(*x.shape[:-1], self.out_features, self.pieces).amax(dim=-1)


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, hidden: list[int], out_shape: tuple[int, ...], tanh: bool,
                 activation: str = "leaky_relu", norm: str = "none"):
        super().__init__()
        self.latent_dim, self.out_shape = latent_dim, tuple(out_shape)
        layers, width = [], latent_dim
        for h in hidden:
            if norm == "batch":
                # BatchNorm's shift makes a bias before it redundant.
                layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h)]
            else:
                layers.append(nn.Linear(width, h))
            layers.append(G_ACTIVATIONS[activation]())
            width = h
        layers.append(nn.Linear(width, math.prod(out_shape)))
        # Images live in [-1, 1]; 2D mixtures (the grid reaches +-4) must not be squashed.
        layers.append(nn.Tanh() if tanh else nn.Identity())
        # One flat Sequential: with the default options the state_dict keys are seed 000's, so
        # its checkpoints still load.
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], hidden: list[int], pack: int,
                 activation: str = "leaky_relu", maxout_pieces: int = 5, dropout: float = 0.0):
        super().__init__()
        self.pack = pack
        layers, width = [], math.prod(in_shape) * pack
        for h in hidden:
            if activation == "maxout":
                layers.append(Maxout(width, h, maxout_pieces))
            else:
                layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_pack(x.shape[0], self.pack)
        # PacGAN: consecutive samples are concatenated into one input.
        return self.net(x.reshape(x.shape[0] // self.pack, -1)).view(-1)


def normal_init(module: nn.Module, std: float) -> None:
    """N(0, std) weights and zero biases for every Linear (BatchNorm keeps its 1 and 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build(data_shape, is_image, *, latent_dim, g_hidden, d_hidden, g_activation, g_norm, d_activation,
          d_maxout_pieces, d_dropout, init_std, spectral_norm, pack):
    if not 0 <= d_dropout < 1:
        raise UserError(f"model.d_dropout must be in [0, 1); got {d_dropout}.")
    check_sizes(latent_dim=latent_dim, g_hidden=list(g_hidden), d_hidden=list(d_hidden),
                d_maxout_pieces=d_maxout_pieces)
    generator = MLPGenerator(latent_dim, list(g_hidden), data_shape, tanh=is_image,
                             activation=_name(g_activation), norm=_name(g_norm))
    discriminator = MLPDiscriminator(data_shape, list(d_hidden), pack, activation=_name(d_activation),
                                     maxout_pieces=d_maxout_pieces, dropout=d_dropout)
    if init_std is not None:
        normal_init(generator, init_std)
        normal_init(discriminator, init_std)
    # After the init: spectral norm keeps the weight it finds as the parameter it normalises.
    return generator, add_spectral_norm(discriminator) if spectral_norm else discriminator
