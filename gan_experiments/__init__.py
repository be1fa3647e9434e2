"""Config-driven GAN experiments: `python -m gan_experiments model=dcgan loss=smooth`."""

__version__ = "0.1.0"
