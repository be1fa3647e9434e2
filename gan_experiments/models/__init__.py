"""Generators and discriminators. Each module's `build(data_shape, ...)` returns (G, D); D always
returns one logit per (packed) example."""

import torch.nn as nn

from gan_experiments.errors import UserError


def check_pack(batch: int, pack: int) -> None:
    if pack < 1 or batch % pack:
        raise UserError(
            f"model.pack={pack} must be a positive divisor of the batch ({batch} samples): "
            f"PacGAN's D judges groups of `pack` samples. Change model.pack or trainer.batch_size."
        )


def check_sizes(**sizes) -> None:
    """Layer sizes must be positive integers; torch would otherwise fail deep inside a layer's
    init."""
    def ok(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    bad = {name: value for name, value in sizes.items()
           if not all(ok(v) for v in (value if isinstance(value, (list, tuple)) else [value]))}
    if bad:
        shown = ", ".join(f"model.{name}={value}" for name, value in bad.items())
        raise UserError(f"{shown}: layer sizes must be positive integers. Set them to 1 or more.")


def add_spectral_norm(discriminator: nn.Module) -> nn.Module:
    """Spectrally normalise every linear and conv layer in place (Miyato et al. 2018)."""
    for module in list(discriminator.modules()):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.utils.parametrizations.spectral_norm(module)
    return discriminator


def check_batch_norm(generator: nn.Module, discriminator: nn.Module, batch: int, pack: int) -> None:
    """BatchNorm in training needs at least two values per channel: G's normalises `batch`
    samples, D's the `batch / pack` packed examples (PacGAN). Torch's own error comes only at
    the first step, as a long traceback."""
    def has_batch_norm(net):
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())

    for name, net, seen in (("G", generator, batch), ("D", discriminator, batch // max(pack, 1))):
        if has_batch_norm(net) and seen < 2:
            packed = f" (trainer.batch_size / model.pack = {batch} / {pack})" if name == "D" and pack > 1 else ""
            raise UserError(
                f"trainer.batch_size={batch}: {name}'s BatchNorm would normalise {seen} example"
                f"{packed} per batch, and needs at least 2. Raise trainer.batch_size"
                + (" (to 2 × model.pack or more)" if name == "D" and pack > 1 else " to 2 or more")
                + (", or use a model without BatchNorm in G (model=mlp model.g_norm=none)."
                   if name == "G" else ", or model.d_norm=layer (or none) for D.")
            )
