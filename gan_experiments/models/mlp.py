"""Seed 000's fully connected GAN, for flattened images and for 2D points."""

import math

import torch
import torch.nn as nn

from gan_experiments.models import add_spectral_norm, check_pack


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, hidden: list[int], out_shape: tuple[int, ...], tanh: bool):
        super().__init__()
        self.latent_dim, self.out_shape = latent_dim, tuple(out_shape)
        layers, width = [], latent_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, math.prod(out_shape)))
        # Images live in [-1, 1]; 2D mixtures (the grid reaches +-4) must not be squashed.
        layers.append(nn.Tanh() if tanh else nn.Identity())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], hidden: list[int], pack: int):
        super().__init__()
        self.pack = pack
        layers, width = [], math.prod(in_shape) * pack
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_pack(x.shape[0], self.pack)
        # PacGAN: consecutive samples are concatenated into one input.
        return self.net(x.reshape(x.shape[0] // self.pack, -1)).view(-1)


def build(data_shape, is_image=True, latent_dim=100, g_hidden=(256, 512), d_hidden=(512, 256),
          spectral_norm=False, pack=1):
    generator = MLPGenerator(latent_dim, list(g_hidden), data_shape, tanh=is_image)
    discriminator = MLPDiscriminator(data_shape, list(d_hidden), pack)
    return generator, add_spectral_norm(discriminator) if spectral_norm else discriminator
