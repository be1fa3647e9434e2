"""DCGAN (Radford et al. 2016): transposed-conv G, strided-conv D, BatchNorm, N(0, 0.02) init.
The depth follows the image size: G starts from a 4x4 (or 7x7) map and doubles it per layer."""

import torch
import torch.nn as nn

from gan_experiments.errors import UserError
from gan_experiments.models import add_spectral_norm, check_pack, check_sizes

SUPPORTED = "8, 14, 16, 28, 32, 56, 64, 112, 128, 256 (4 or 7 times a power of two)"


def plan(image_size: int) -> tuple[int, int]:
    """(first feature-map size, number of stride-2 layers) for a square image."""
    for base in (4, 7):
        size, doublings = image_size, 0
        while size > base and size % 2 == 0:
            size, doublings = size // 2, doublings + 1
        if size == base and doublings >= 1:
            return base, doublings
    raise UserError(
        f"model=dcgan cannot build for {image_size}x{image_size} images: its layers double the "
        f"size from 4x4 or 7x7, so it supports {SUPPORTED}. Set data.image_size to one of "
        f"these (the data is resized once at load), or use model=mlp, which takes any size."
    )


class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int):
        super().__init__()
        self.latent_dim = latent_dim
        base, doublings = plan(image_size)
        widths = [width * 2**i for i in reversed(range(doublings))]
        layers = [nn.ConvTranspose2d(latent_dim, widths[0], base, 1, 0, bias=False),
                  nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))


NORMS = {
    "batch": nn.BatchNorm2d,
    # GroupNorm with one group normalises each example on its own, as the WGAN-GP paper asks.
    "layer": lambda c: nn.GroupNorm(1, c),
    "none": lambda c: nn.Identity(),
}


class DCGANDiscriminator(nn.Module):
    def __init__(self, channels: int, image_size: int, width: int, norm: str, pack: int):
        super().__init__()
        self.pack = pack
        base, doublings = plan(image_size)
        widths = [width * 2**i for i in range(doublings)]
        layers = [nn.Conv2d(channels * pack, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), NORMS[norm](c_out),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(widths[-1], 1, base, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_pack(x.shape[0], self.pack)
        n, c, h, w = x.shape
        # PacGAN: `pack` consecutive samples are stacked along the channels.
        return self.net(x.reshape(n // self.pack, c * self.pack, h, w)).view(-1)


def dcgan_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build(data_shape, is_image, *, latent_dim, g_width, d_width, d_norm, spectral_norm, pack):
    if not is_image or len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise UserError(
            f"model=dcgan needs square images, but the data has shape {tuple(data_shape)}. "
            f"For 2D point data (data=ring or data=grid) use model=mlp."
        )
    check_sizes(latent_dim=latent_dim, g_width=g_width, d_width=d_width)
    channels, image_size = data_shape[0], data_shape[1]
    # Spectral norm already bounds D's Lipschitz constant; batch norm on top would undo that.
    norm = "none" if spectral_norm else getattr(d_norm, "value", d_norm)
    generator = DCGANGenerator(latent_dim, channels, image_size, g_width)
    discriminator = DCGANDiscriminator(channels, image_size, d_width, norm, pack)
    generator.apply(dcgan_init)
    discriminator.apply(dcgan_init)
    return generator, add_spectral_norm(discriminator) if spectral_norm else discriminator
