"""Whether a run may start, and how: the checks that may refuse a start, and the one list of
the config keys that do not change a run's results.

A start is checked before anything is written, so a refused start leaves the run dir exactly as
it was."""

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from gan_experiments import checkpoint
from gan_experiments.config import out_of_range
from gan_experiments.errors import UserError
from gan_experiments.paths import RunPaths
from gan_experiments.record import FINAL, RunRecord
from gan_experiments.state import TrainingState


class StartRefused(UserError):
    """The run dir holds a run this start would damage, or the start can't be made at all.
    Raised before anything is written."""


# The one answer to "is this the same experiment?". Keys that may differ between the starts of
# one run without changing what it computes (how often it logs, samples and checkpoints, where
# caches are, the terminal bar, the device); and keys that may change, but not below where the
# run got: a finished run trains further when trainer.steps grows. Every other key of the
# resolved config must be equal, or the start is refused.
RESULT_NEUTRAL = (
    "resume", "trainer.progress", "trainer.log_every", "trainer.sample_every",
    "trainer.checkpoint_every", "trainer.device", "eval.every", "eval.cache_dir",
    "eval.inception_weights", "data.cache_dir", "data.download", "data.num_workers",
    "jobs_per_gpu", "cpus_per_job", "logger",
)
GROWABLE = ("trainer.steps",)


def result_neutral(key: str) -> bool:
    """Whether a config key (`trainer.log_every`, `logger.mlflow.tracking_uri`) is in
    RESULT_NEUTRAL or below one of its keys."""
    return any(key == k or key.startswith(k + ".") for k in RESULT_NEUTRAL)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Every key outside RESULT_NEUTRAL and GROWABLE whose value differs between two resolved
    configs, as 'key: saved -> current'."""
    old, new = checkpoint.flatten(saved), checkpoint.flatten(current)
    keys = sorted(k for k in old.keys() | new.keys() if not result_neutral(k) and k not in GROWABLE)
    return [f"{k}: {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}" for k in keys
            if old.get(k, "<absent>") != new.get(k, "<absent>")]


@dataclass(frozen=True)
class Start:
    """How a run starts: `fresh`, `resume` from `saved` (a checkpoint, on the CPU), or `skip`
    because the run in the folder already finished as `record` says."""

    kind: str
    saved: TrainingState | None = None
    record: RunRecord | None = None

    @property
    def step(self) -> int:
        return self.saved.step if self.saved else 0


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


def recorded_config(paths: RunPaths, saved: TrainingState | None) -> dict | None:
    """The resolved config the folder's run was started with: its checkpoint's, else the one
    written into .hydra/ when it started (a run that failed before its first checkpoint)."""
    if saved is not None:
        return saved.config
    try:
        return yaml.safe_load(paths.config.read_text())
    except (OSError, yaml.YAMLError):
        return None


def check_values(cfg: DictConfig) -> None:
    """Raises StartRefused, naming each key, for a value outside the range its schema declares
    (config.out_of_range), an interpolation that does not resolve, or a value left missing."""
    try:
        problems = out_of_range(cfg)
    except (InterpolationResolutionError, MissingMandatoryValue) as error:
        raise StartRefused(f"{error.full_key}: {str(error.msg).splitlines()[0]}. Fix that value (on the command line, "
                           f"in its option's YAML or in your --config-dir).") from None
    if problems:
        raise StartRefused(f"{'; '.join(problems)}. Choose values in range (on the command line, in "
                           f"the option's YAML or in your --config-dir).")


def load_checkpoint(paths: RunPaths) -> TrainingState:
    try:
        return TrainingState.load(paths.checkpoint)
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
    paths = RunPaths(run_dir)
    record = RunRecord.read(run_dir)
    has_checkpoint = paths.checkpoint.exists()
    if not record and not has_checkpoint:
        if config["resume"] and not rerun:
            load_checkpoint(paths)  # refuses, saying where resume=true should point
        return Start("fresh")
    if not (config["resume"] or rerun):
        held = f"a run ({record.status} at step {record.step})" if record else "a checkpoint"
        raise StartRefused(
            f"{run_dir} already holds {held}. Pass resume=true to continue that run, or choose "
            f"a new hydra.run.dir: a new run here would overwrite it."
        )
    saved = load_checkpoint(paths) if has_checkpoint else None
    check_same_experiment(paths, config, saved)
    reached = saved.step if saved else 0
    finished = record is not None and record.status in FINAL
    if finished and saved is None:
        raise StartRefused(
            f"{run_dir} holds a finished run ({record.status}) whose checkpoint "
            f"{paths.checkpoint} is missing: it can be neither skipped as it is nor continued. "
            f"Restore the checkpoint, or start a new run in another hydra.run.dir."
        )
    if finished and (record.status == "diverged" or config["trainer"]["steps"] == reached):
        return Start("skip", record=record)
    return Start("resume", saved=saved) if saved is not None else Start("fresh")


def check_same_experiment(paths: RunPaths, config: dict, saved: TrainingState | None) -> None:
    """Raises StartRefused, listing the differences, unless `config` is the config the folder's
    run was started with (up to RESULT_NEUTRAL, and GROWABLE not below the step it reached)."""
    recorded = recorded_config(paths, saved)
    differences = config_differences(recorded, config) if recorded is not None else []
    reached = saved.step if saved else 0
    if config["trainer"]["steps"] < reached:
        differences.append(f"trainer.steps={config['trainer']['steps']} is below step {reached}, "
                           f"which the run reached")
    if differences:
        raise StartRefused(
            f"{paths.root} holds a run of another config: {'; '.join(differences)} (the folder's "
            f"values first). Continue it with the values it was started with, or start a new "
            f"run in another hydra.run.dir (a sweep: another hydra.sweep.dir)."
        )


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


class CheckStart(Callback):
    """Before Hydra creates the run's folder: values out of range, or a config that does not
    resolve, and a run (or sweep) folder that cannot be written, are one paragraph naming the
    key, not Hydra's traceback, and nothing is written."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._refuse_unless(lambda: check_values(config))
        self._refuse_unless(lambda: check_writable(Path(config.hydra.run.dir), "hydra.run.dir"))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # Each job's values are checked by the job (run.run): a sweep may vary them.
        from gan_experiments.sweep import optuna_problems

        problems = optuna_problems(config)
        if problems:
            raise SystemExit(f"\nError: Optuna cannot search {'; '.join(problems)}. Fix the range (a log "
                             f"interval must start above 0, an interval's start be below its end). "
                             f"Nothing was written.\n")
        self._refuse_unless(lambda: check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir"))

    @staticmethod
    def _refuse_unless(check) -> None:
        try:
            check()
        except StartRefused as error:
            raise SystemExit(f"\nError: {error} Nothing was written.\n") from None
