"""A run's lifecycle in one place: the checks that may refuse a start, and the run's status.

A start is checked before anything is written, so a refused start leaves the run dir exactly as
it was. Once started, status.json moves running -> ok | diverged | interrupted | failed, and
only `RunStatus` writes it.
"""

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gan_experiments import checkpoint
from gan_experiments.errors import UserError

# ok: reached trainer.steps; metrics measured at the last step; a sweep rerun skips it.
# diverged: a non-finite loss; metrics from before, value null; a sweep rerun skips it.
# interrupted: stopped by a signal after writing a checkpoint; metrics may be older than the
#   step; value null; a sweep rerun resumes it.
# failed: an error after the start; value null; a sweep rerun resumes from the checkpoint.
STATUSES = ("running", "ok", "diverged", "interrupted", "failed")
FINAL = ("ok", "diverged")  # a sweep rerun would only repeat these


class StartRefused(UserError):
    """The run dir holds a run this start would damage, or the start can't be made at all.
    Raised before anything is written."""


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
        return self.root / "status.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

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

    def sample(self, step: int, tag: str = "samples") -> Path:
        return self.root / tag / f"step_{step:06d}.png"

    def last_sample(self, tag: str = "samples") -> Path | None:
        """The grid (or scatter plot) of the highest step, if any was written."""
        grids = (self.root / tag).glob("step_*.png")
        return max(grids, key=lambda p: int(p.stem.removeprefix("step_")), default=None)


def checkpoint_path(run_dir: Path) -> Path:
    return RunPaths(run_dir).checkpoint


def check_start(cfg, run_dir: Path, config: dict) -> dict | None:
    """The checkpoint to resume from (loaded onto the CPU), or None for a fresh run. Raises
    StartRefused; writes nothing."""
    run_dir, tc = Path(run_dir), cfg.trainer
    if checkpoint_path(run_dir).exists() and not cfg.resume:
        raise StartRefused(
            f"{run_dir} already holds a checkpoint. Pass resume=true to continue that run, or "
            f"choose a new hydra.run.dir: a new run here would overwrite it."
        )
    for name in ("steps", "batch_size", "d_steps", "log_every", "sample_every", "checkpoint_every"):
        if tc[name] < 1:
            raise StartRefused(f"trainer.{name} must be at least 1, got {tc[name]}.")
    if not cfg.resume:
        return None
    try:
        saved = checkpoint.load(checkpoint_path(run_dir))
    except UserError as error:
        raise StartRefused(str(error)) from None
    differences = checkpoint.config_differences(saved["config"], config)
    if differences:
        raise StartRefused(
            f"Cannot resume {run_dir}: the config differs from the one it was trained with in "
            f"{'; '.join(differences)}. Resume with the original values (shown first), or start "
            f"a new run in another hydra.run.dir."
        )
    return saved


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


class RunStatus:
    """status.json: what state the run is in, and what it measured, each metric with its step."""

    def __init__(self, run_dir: Path, steps: int, objective: str = "", resumed_from: int | None = None):
        self.path = RunPaths(run_dir).status
        self.steps, self.objective = steps, objective
        # Where and when: a sweep's table and its GPU placement are checked from these.
        # `started` is this leg's start; a resumed run also keeps when its first leg started.
        self.origin = {"started": _now(), "host": socket.gethostname(),
                       "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        if resumed_from is not None:
            before = read_status(run_dir)
            self.origin["first_started"] = before.get("first_started") or before.get("started")
            self.origin["resumed_from_step"] = resumed_from

    def _write(self, status: str, step: int, **fields) -> dict:
        assert status in STATUSES, status
        payload = {"status": status, "step": step, "steps": self.steps, **fields, **self.origin}
        if status != "running":
            payload["ended"] = _now()
        checkpoint.write_json(self.path, payload)
        return checkpoint.strict(payload)

    def running(self, step: int) -> None:
        self._write("running", step)

    def end(self, status: str, step: int, metrics: dict[str, dict]) -> dict:
        """`metrics` maps a tag to {"value", "step"}. The objective's value is reported only
        for a run that reached its last step and measured the objective there."""
        measured = metrics.get(f"metrics/{self.objective}") or metrics.get(f"final/{self.objective}")
        value = measured["value"] if status == "ok" and measured and measured["step"] == step else None
        return self._write(status, step, objective=self.objective, value=value, metrics=metrics)

    def failed(self, step: int, error: BaseException) -> dict:
        return self._write("failed", step, objective=self.objective, value=None,
                           error=f"{type(error).__name__}: {error}")


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads(RunPaths(run_dir).status.read_text())
    except (OSError, ValueError):
        return {}
