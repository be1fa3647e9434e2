"""A run's lifecycle in one place: the checks that may refuse a start, and the run's status.

A start is checked before anything is written, so a refused start leaves the run dir exactly as
it was. Once started, status.json moves running -> ok | diverged | interrupted | failed, and
only `RunStatus` writes it.
"""

import json
import os
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

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

    def sample(self, step: int, tag: str = "samples") -> Path:
        return self.root / tag / f"step_{step:06d}.png"

    def last_sample(self, tag: str = "samples") -> Path | None:
        """The grid (or scatter plot) of the highest step, if any was written."""
        grids = (self.root / tag).glob("step_*.png")
        return max(grids, key=lambda p: int(p.stem.removeprefix("step_")), default=None)


# The one answer to "is this the same experiment?". Keys that may differ between the starts of
# one run without changing what it computes (how often it logs, samples and checkpoints, where
# caches are, the terminal bar, the device); and keys that may change, but not below where the
# run got: a finished run trains further when trainer.steps grows. Every other key of the
# resolved config must be equal, or the start is refused.
RESULT_NEUTRAL = (
    "resume", "trainer.progress", "trainer.log_every", "trainer.sample_every",
    "trainer.checkpoint_every", "trainer.device", "eval.every", "eval.cache_dir",
    "eval.inception_weights", "data.cache_dir", "data.download", "data.num_workers",
    "jobs_per_gpu", "cpus_per_job",
)
GROWABLE = ("trainer.steps",)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Every key outside RESULT_NEUTRAL and GROWABLE whose value differs between two resolved
    configs, as 'key: saved -> current'."""
    old, new = checkpoint.flatten(saved), checkpoint.flatten(current)
    keys = sorted(k for k in old.keys() | new.keys() if k not in RESULT_NEUTRAL + GROWABLE)
    return [f"{k}: {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}" for k in keys
            if old.get(k, "<absent>") != new.get(k, "<absent>")]


@dataclass(frozen=True)
class Start:
    """How a run starts: `fresh`, `resume` from `saved` (a checkpoint, on the CPU), or `skip`
    because the run in the folder already finished with `status` (its status.json)."""

    kind: str
    saved: dict | None = None
    status: dict | None = None

    @property
    def step(self) -> int:
        return self.saved["gan"]["step"] if self.saved else 0


@contextmanager
def claim(run_dir: Path):
    """One process per run dir: a lock on the folder's `.lock` file, held while the start is
    decided and the run trains. The operating system drops it with its process (flock), so a
    run killed with -9 leaves no stale lock. Raises StartRefused if another process holds it.
    A start refused inside leaves a folder that held no run as it was: the lock file it made is
    removed, and the folder too if this created it (the CLI's run dir is Hydra's, made before)."""
    paths = RunPaths(run_dir)
    created_folder, created_lock = not paths.root.exists(), not paths.lock.exists()
    paths.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(paths.lock, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise StartRefused(
            f"Another process is using {run_dir}: it holds the folder's lock ({paths.lock}), so "
            f"a run is training there now. Wait for it to end (or stop it), or choose another "
            f"hydra.run.dir; two runs in one folder would mix their checkpoints and event files."
        ) from None
    try:
        yield
    except StartRefused:
        if created_lock:
            paths.lock.unlink(missing_ok=True)
        if created_folder and not any(paths.root.iterdir()):
            paths.root.rmdir()
        raise
    finally:
        lock.release()


def recorded_config(paths: RunPaths, saved: dict | None) -> dict | None:
    """The resolved config the folder's run was started with: its checkpoint's, else the one
    written into .hydra/ when it started (a run that failed before its first checkpoint)."""
    if saved is not None:
        return _as_today(saved["config"])
    try:
        return _as_today(yaml.safe_load(paths.config.read_text()))
    except (OSError, yaml.YAMLError):
        return None


def _as_today(config: dict | None) -> dict | None:
    """A recorded config in today's keys. Runs recorded before trainer.deterministic existed ran
    without deterministic kernels: trainer.deterministic=false."""
    config = _with_penalty_option(config)
    if isinstance((config or {}).get("trainer"), dict):
        config["trainer"].setdefault("deterministic", False)
    return config


# Runs recorded before the gradient penalty was a loss/penalty option say `loss.penalty: <name>`
# and `loss.penalty_weight`. Without a penalty, and with WGAN-GP's, they computed what today's
# options compute, so they are compared as those. R1 now takes a pass of D of its own, so an
# old R1 run stays a run of another config.
_PENALTY_OPTIONS = {"none": "gan_experiments.losses.no_penalty",
                    "wgan_gp": "gan_experiments.losses.wgan_gradient_penalty"}


def _with_penalty_option(config: dict | None) -> dict | None:
    loss = (config or {}).get("loss") or {}
    if isinstance(loss.get("penalty"), str) and loss["penalty"] in _PENALTY_OPTIONS:
        weight = loss.pop("penalty_weight", None) if loss["penalty"] == "wgan_gp" else 0.0
        loss.pop("penalty_weight", None)
        loss["penalty"] = {"_target_": _PENALTY_OPTIONS[loss["penalty"]], "_partial_": True, "weight": weight}
    return config


def check_counts(trainer) -> None:
    for name in ("steps", "batch_size", "d_steps", "log_every", "sample_every", "checkpoint_every"):
        if trainer[name] < 1:
            raise StartRefused(f"trainer.{name} must be at least 1, got {trainer[name]}.")


def load_checkpoint(paths: RunPaths) -> dict:
    try:
        return checkpoint.load(paths.checkpoint)
    except UserError as error:
        raise StartRefused(str(error)) from None


def decide_start(run_dir: Path, config: dict, rerun: bool = False) -> Start:
    """For a single run and a sweep's job alike: fresh | resume | skip, or StartRefused with
    the reason. `config` is this start's resolved config; `rerun` says a sweep is run again in
    its sweep dir, which continues its jobs as resume=true does. Reads, writes nothing.

    A folder's run continues only under the same config (up to RESULT_NEUTRAL, and GROWABLE
    not below the step it reached): a finished run (ok, diverged) is skipped, or trained
    further when trainer.steps grew; an interrupted, failed or killed one resumes from its
    checkpoint, or starts over if it had none."""
    check_counts(config["trainer"])
    paths = RunPaths(run_dir)
    status = read_status(run_dir)
    has_checkpoint = paths.checkpoint.exists()
    if not status and not has_checkpoint:
        if config["resume"] and not rerun:
            load_checkpoint(paths)  # refuses, saying where resume=true should point
        return Start("fresh")
    if not (config["resume"] or rerun):
        held = f"a run ({status['status']} at step {status['step']})" if status else "a checkpoint"
        raise StartRefused(
            f"{run_dir} already holds {held}. Pass resume=true to continue that run, or choose "
            f"a new hydra.run.dir: a new run here would overwrite it."
        )
    saved = load_checkpoint(paths) if has_checkpoint else None
    recorded = recorded_config(paths, saved)
    differences = config_differences(recorded, config) if recorded is not None else []
    reached = saved["gan"]["step"] if saved else 0
    if config["trainer"]["steps"] < reached:
        differences.append(f"trainer.steps={config['trainer']['steps']} is below step {reached}, "
                           f"which the run reached")
    if differences:
        raise StartRefused(
            f"{run_dir} holds a run of another config: {'; '.join(differences)} (the folder's "
            f"values first). Continue it with the values it was started with, or start a new "
            f"run in another hydra.run.dir (a sweep: another hydra.sweep.dir)."
        )
    finished = status.get("status") in FINAL
    if finished and saved is None:
        raise StartRefused(
            f"{run_dir} holds a finished run ({status['status']}) whose checkpoint "
            f"{paths.checkpoint} is missing: it can be neither skipped as it is nor continued. "
            f"Restore the checkpoint, or start a new run in another hydra.run.dir."
        )
    if finished and (status["status"] == "diverged" or config["trainer"]["steps"] == reached):
        return Start("skip", status=status)
    return Start("resume", saved=saved) if saved is not None else Start("fresh")


def check_writable(folder: Path, key: str) -> None:
    """Raises StartRefused, naming `key` (the setting that moves the folder), where `folder`
    cannot be created or written: a read-only file system, no permission, an unwritable HOME.
    Creates the folder where it can."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise StartRefused(f"{key}={folder} cannot be written ({error.strerror or error}). Point "
                           f"{key} at a folder you can write.") from None


class CheckOutputFolder(Callback):
    """Before Hydra creates the run's (or the sweep's) folder: one that cannot be written is one
    paragraph naming hydra.run.dir (hydra.sweep.dir), not Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        try:
            check_writable(Path(folder), key)
        except StartRefused as error:
            raise SystemExit(f"\nError: {error} Nothing was written.\n") from None


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


class RunStatus:
    """status.json: what state the run is in, and what it measured, each metric with its step."""

    def __init__(self, run_dir: Path, steps: int, objective: str = "", resumed_from: int | None = None):
        self.path = RunPaths(run_dir).status
        self.steps, self.objective = steps, objective
        # Where and when: a sweep's table and its GPU placement are checked from these.
        # `started` is this leg's start; a resumed run also keeps when its first leg started.
        self.origin = {"started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                       "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        if resumed_from is not None:
            before = read_status(run_dir)
            self.origin["first_started"] = before.get("first_started") or before.get("started")
            self.origin["resumed_from_step"] = resumed_from
            if before.get("resumed_on_other_arithmetic"):  # once not bit-exact, never again
                self.origin["resumed_on_other_arithmetic"] = before["resumed_on_other_arithmetic"]

    def _write(self, status: str, step: int, **fields) -> dict:
        assert status in STATUSES, status
        payload = {"status": status, "step": step, "steps": self.steps, **fields, **self.origin}
        if status != "running":
            payload["ended"] = _now()
        checkpoint.write_json(self.path, payload)
        return checkpoint.strict(payload)

    def running(self, step: int) -> None:
        self._write("running", step)

    def end(self, status: str, step: int, metrics: dict[str, dict], stopped_by: str = "") -> dict:
        """`metrics` maps a tag to {"value", "step"}. The objective's value is reported only
        for a run that reached its last step and measured the objective there. `stopped_by`:
        the signal that interrupted the run (the SLURM launcher requeues on SIGUSR2)."""
        measured = metrics.get(f"metrics/{self.objective}") or metrics.get(f"final/{self.objective}")
        value = measured["value"] if status == "ok" and measured and measured["step"] == step else None
        extra = {"stopped_by": stopped_by} if status == "interrupted" and stopped_by else {}
        return self._write(status, step, objective=self.objective, value=value, metrics=metrics, **extra)

    def failed(self, step: int, error: BaseException) -> dict:
        return self._write("failed", step, objective=self.objective, value=None,
                           error=f"{type(error).__name__}: {error}")


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads(RunPaths(run_dir).status.read_text())
    except (OSError, ValueError):
        return {}
