"""A run's record: the state it is in and what it measured, in `status.json`, the run's one
results file. The runner writes it, and the rerun decision, the sweep table, the SLURM requeue
and the report read it, all through `RunRecord`.

A run moves running -> ok | diverged | interrupted | failed:
- ok: reached trainer.steps, with its metrics measured at the last step; a sweep rerun skips it.
- diverged: a non-finite loss; metrics from before, value null; a sweep rerun skips it.
- interrupted: stopped by a signal after writing a checkpoint; metrics may be older than the
  step; value null; a sweep rerun resumes it.
- failed: an error after the start; value null; a sweep rerun resumes from the checkpoint.
- stopped: its process was lost from outside (the Ray node it ran on died), as the sweep's
  driver recorded; value null; a sweep rerun resumes it from its last checkpoint.
"""

import json
import math
import os
import socket
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

from gan_experiments.metrics import registry
from gan_experiments.paths import RunPaths

# In the report's column order: the runs it averages first.
STATUSES = ("ok", "interrupted", "diverged", "failed", "stopped", "running")
FINAL = ("ok", "diverged")  # a sweep rerun would only repeat these


def strict(value):
    """JSON has no NaN or Infinity: a value that was not measured, or not finite, is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


@dataclass(frozen=True)
class Measurement:
    """One metric's value, the training step it was measured at, and its method: how it was
    measured (feature extractor, its weights' sha256, device, sample counts, real split). Two
    values are comparable only where their methods agree (report.py). Losses have no method."""

    value: float | None
    step: int
    method: dict | None = None

    @classmethod
    def from_json(cls, data: dict) -> "Measurement":
        return cls(data.get("value"), data.get("step", 0), data.get("method"))


def measurements(data: dict | None) -> dict[str, Measurement]:
    """A tag -> Measurement table from its JSON (status.json's, or a checkpoint's)."""
    return {tag: Measurement.from_json(m) for tag, m in (data or {}).items()}


def measurements_json(table: dict[str, Measurement]) -> dict[str, dict]:
    return {tag: asdict(m) for tag, m in table.items()}


@dataclass
class RunRecord:
    """status.json. `metrics` maps a TensorBoard tag (`registry.tag`) to its Measurement;
    `value` is the objective's, set only for a run that ended ok with the objective measured
    at its last step. The other fields say where and when: a sweep's table and its GPU
    placement are checked from these; `started` is this leg's start, `first_started` the run's
    first leg's."""

    status: str
    step: int
    steps: int
    objective: str = ""
    value: float | None = None
    metrics: dict[str, Measurement] = field(default_factory=dict)
    started: str = ""
    ended: str | None = None
    first_started: str | None = None
    resumed_from_step: int | None = None
    host: str = ""
    pid: int | None = None
    cuda_visible_devices: str | None = None
    arithmetic: dict | None = None  # checkpoint.arithmetic: what bit-exactness depends on
    resumed_on_other_arithmetic: list[str] | None = None  # once not bit-exact, never again
    stopped_by: str | None = None  # the signal that interrupted it (SLURM requeues on SIGUSR2), or what was lost
    error: str | None = None  # why it failed
    fused_with: list[int] | None = None  # trained fused (hydra/launcher=fused) with these seeds' runs

    # --- one JSON round trip ---------------------------------------------------------------

    def to_json(self) -> dict:
        """Strict JSON: a value that was not measured, or not finite, is null. Optional fields
        that do not apply are left out."""
        payload = {f.name: getattr(self, f.name) for f in fields(self)}
        payload["metrics"] = measurements_json(self.metrics)
        return strict({k: v for k, v in payload.items() if k not in _ONLY_WHERE_THEY_APPLY or v is not None})

    @classmethod
    def from_json(cls, data: dict) -> "RunRecord":
        known = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in known})
        record.metrics = measurements(data.get("metrics"))
        return record

    def write(self, run_dir: Path) -> None:
        from gan_experiments.checkpoint import atomic_write  # torch: not for the report's readers

        text = json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n"
        atomic_write(RunPaths(run_dir).status, lambda f: f.write(text.encode()))

    @classmethod
    def read(cls, run_dir: Path) -> "RunRecord | None":
        """The folder's record; None where there is none, or it cannot be read."""
        try:
            return cls.from_json(json.loads(RunPaths(run_dir).status.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    # --- the run's course ------------------------------------------------------------------

    @classmethod
    def begin(cls, run_dir: Path, steps: int, step: int, resumed: bool, objective: str,
              arithmetic: dict) -> "RunRecord":
        """A leg's record, `running` at `step`. A resumed run keeps its first leg's start and
        whether it was ever resumed on other arithmetic."""
        before = cls.read(run_dir) if resumed else None
        return cls("running", step, steps, objective, started=_now(), host=socket.gethostname(), pid=os.getpid(),
                   cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), arithmetic=arithmetic,
                   first_started=(before.first_started or before.started) if before else None,
                   resumed_from_step=step if resumed else None,
                   resumed_on_other_arithmetic=before.resumed_on_other_arithmetic if before else None,
                   fused_with=before.fused_with if before else None)

    def running(self, step: int) -> None:
        self.status, self.step = "running", step

    def end(self, status: str, step: int, stopped_by: str = "") -> None:
        """ok | diverged | interrupted at `step`. The objective's value is the run's only for a
        run that reached its last step and measured the objective there."""
        assert status in STATUSES and status != "running", status
        self.status, self.step, self.ended = status, step, _now()
        measured = self.metrics.get(registry.tag(self.objective)) if self.objective else None
        self.value = measured.value if status == "ok" and measured and measured.step == step else None
        self.stopped_by = stopped_by or None if status == "interrupted" else None

    def failed(self, step: int, error: BaseException) -> None:
        self.status, self.step, self.ended, self.value = "failed", step, _now(), None
        self.error = f"{type(error).__name__}: {error}"

    def lost(self, why: str) -> None:
        """Stopped from outside without a word from the run: its step stays the last one
        recorded (a checkpoint's), and `stopped_by` says what stopped it."""
        self.status, self.ended, self.value, self.stopped_by = "stopped", _now(), None, why

    def value_of(self, tag: str) -> float | None:
        measured = self.metrics.get(tag)
        return measured.value if measured else None


# Left out of status.json while None; every other field is always there (null: not known).
_ONLY_WHERE_THEY_APPLY = ("ended", "first_started", "resumed_from_step", "resumed_on_other_arithmetic",
                          "stopped_by", "error", "fused_with")


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")
