"""Where each file of a run folder lives."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Every file of a run folder, named once: the runner, the sweep, the report and the
    sampler all find a run's files through this."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def status(self) -> Path:
        """The run's record (gan_experiments.record): its state and what it measured."""
        return self.root / "status.json"

    @property
    def lock(self) -> Path:
        """Held by the process that trains in the folder (`claim`)."""
        return self.root / ".lock"

    @property
    def hydra(self) -> Path:
        """The composed config, Hydra's own config and the command-line overrides."""
        return self.root / ".hydra"

    @property
    def config(self) -> Path:
        return self.hydra / "config.yaml"

    @property
    def overrides(self) -> Path:
        return self.hydra / "overrides.yaml"

    @property
    def csv(self) -> Path:
        """logger=csv's scalars, a row (step, tag, value) each."""
        return self.root / "scalars.csv"

    @property
    def logged_runs(self) -> Path:
        """The MLflow and W&B run ids of the run, and the step each holds it through."""
        return self.root / "logged_runs.json"

    def sample(self, step: int, tag: str = "samples") -> Path:
        return self.root / tag / f"step_{step:06d}.png"

    def last_sample(self, tag: str = "samples") -> Path | None:
        """The grid (or scatter plot) of the highest step, if any was written."""
        grids = (self.root / tag).glob("step_*.png")
        return max(grids, key=lambda p: int(p.stem.removeprefix("step_")), default=None)
