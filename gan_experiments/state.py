"""What training changes (`GAN`) and what a checkpoint holds (`TrainingState`), each declared
once: saving, loading and the check of a checkpoint's layout all derive from these fields."""

from dataclasses import dataclass, fields
from pathlib import Path

import torch

from gan_experiments import checkpoint
from gan_experiments.ema import EMA
from gan_experiments.errors import UserError


@dataclass
class GAN:
    """Everything that a training step changes. Each field is a module, optimizer, scheduler or
    EMA (saved through its state_dict), or a tensor or number (saved as it is)."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None  # an EMA of the generator's weights (trainer.ema_decay > 0)
    fixed_noise: torch.Tensor  # the sample grid's latents, the same at every step
    step: int = 0  # generator updates taken

    @property
    def device(self) -> torch.device:
        return self.fixed_noise.device

    def end_step(self) -> None:
        """After a generator update: the learning-rate schedules, the EMA, the step count."""
        self.sched_g.step()
        self.sched_d.step()
        if self.ema is not None:
            self.ema.update_parameters(self.generator)
        self.step += 1

    def state_dict(self) -> dict:
        return {f.name: _state_of(getattr(self, f.name)) for f in fields(self)}

    def load_state_dict(self, state: dict) -> None:
        for f in fields(self):
            held, saved = getattr(self, f.name), state[f.name]
            if hasattr(held, "load_state_dict"):
                held.load_state_dict(saved)
            elif isinstance(held, torch.Tensor):
                setattr(self, f.name, saved.to(held.device))
            elif held is not None:
                setattr(self, f.name, saved)


def _state_of(value):
    return value.state_dict() if hasattr(value, "state_dict") else value


@dataclass
class TrainingState:
    """A checkpoint: the GAN's state, the RNG streams, and what the run needs to go on exactly
    where it stopped. Loaded onto the CPU; `load` moves the GAN's tensors to the device."""

    gan: dict  # GAN.state_dict()
    rng: dict  # checkpoint.rng_state: every stream the run draws from
    config: dict  # the resolved config the run was started with
    data_shape: tuple  # of one example, which the sampler builds G for
    is_image: bool
    scalers: list  # the fp16 loss scalers' states (G's, D's)
    noise_horizon: int  # instance noise's annealing steps, fixed at the run's first start
    last_scalars: dict  # the scalars last logged (loss/D, D/real, ...), at last_scalars_step
    last_scalars_step: int
    metrics: dict  # tag -> record.Measurement as JSON: the run's measurements so far
    arithmetic: dict  # checkpoint.arithmetic of the leg that saved it

    def save(self, path: Path) -> None:
        # Shallow: dataclasses.asdict would deep-copy every weight and optimizer moment first.
        checkpoint.save(path, {f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path, device="cpu") -> "TrainingState":
        """Raises UserError, naming the fix, for a missing file, one torch cannot read, or one
        not in this layout; the file is left untouched."""
        if not path.is_file():
            raise UserError(
                f"resume=true, but there is no checkpoint at {path}. Point hydra.run.dir at the run "
                f"directory to continue (e.g. resume=true hydra.run.dir=outputs/runs/<run>), or drop "
                f"resume=true to start a new run.")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # torch raises several types for truncated or foreign files
            raise UserError(
                f"The checkpoint {path} cannot be read ({type(error).__name__}: {error}); it is "
                f"probably truncated or not a gan_experiments checkpoint. It was left untouched. "
                f"Restore it from a copy, or move it away and start a new run without resume=true."
            ) from None
        missing = missing_entries(saved)
        if missing:
            raise UserError(
                f"The checkpoint {path} is not in this version's layout: it lacks {', '.join(missing)} "
                f"(a bare state_dict, or a file from another program or version). It was left "
                f"untouched. Point at a checkpoint that gan_experiments wrote, or move this one away "
                f"and start a new run without resume=true.")
        state = cls(**{f.name: saved[f.name] for f in fields(cls)})
        # The RNG states stay CPU ByteTensors, the only kind torch accepts back.
        state.gan = checkpoint.to_device(state.gan, device)
        return state

    @property
    def step(self) -> int:
        return self.gan["step"]


def missing_entries(saved) -> list[str]:
    """The entries of TrainingState (with GAN's and the RNG streams inside) that `saved` lacks,
    as dotted names; all of them if it is no dict."""
    inner = {"gan": [f.name for f in fields(GAN)], "rng": checkpoint.RNG_STREAMS}
    if not isinstance(saved, dict):
        return [f.name for f in fields(TrainingState)]
    missing = []
    for key in (f.name for f in fields(TrainingState)):
        if key not in saved:
            missing.append(key)
        elif key in inner and not isinstance(saved[key], dict):
            missing.append(f"{key} (not a dict)")
        elif key in inner:
            missing += [f"{key}.{name}" for name in inner[key] if name not in saved[key]]
    return missing
