"""Where a run starts and ends: claim its folder, decide how it starts, train, and turn the way
it ended (finished, skipped, refused, stopped at once, failed) into one `Outcome` for the
runner to print. The single place that handles failure, as lightning-hydra-template's
`task_wrapper` keeps it out of `train()`."""

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from gan_experiments import checkpoint
from gan_experiments.errors import UserError
from gan_experiments.lifecycle import Start, StartRefused, check_values, claim, decide_start
from gan_experiments.loggers import LoggedRun, Loggers, job_group, start_loggers
from gan_experiments.paths import RunPaths
from gan_experiments.record import RunRecord, measurements
from gan_experiments.state import TrainingState
from gan_experiments.stop import StopNow, stop_requests, sweep_stopped
from gan_experiments.summaries import HParams
from gan_experiments.sweep import release_gpu_memory
from gan_experiments.train import prepare, resolve_device, resolved, train

log = logging.getLogger(__name__)

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # from writers that do not go through atomic_write


@dataclass(frozen=True)
class Outcome:
    """How a start ended.

    kind: `trained` (the run ended as `record.status` says: ok, diverged or interrupted),
    `skipped` (the folder's run had already finished), `not_started` (its sweep was stopped
    first), `refused` (nothing was written: `message` says why), `stopped_at_once` (a second
    signal: status failed, no new checkpoint) or `failed` (an error after the start: status
    failed; `message` is the paragraph to show, `error` the exception)."""

    kind: str
    record: RunRecord | None = None
    message: str = ""
    error: BaseException | None = None

    @property
    def value(self) -> float | None:
        """What the runner returns to Hydra (and so to a sweeper): the objective's value, or None
        for a run that did not finish with one, which sweepers such as Optuna record as failed."""
        value = self.record.value if self.record else None
        return float(value) if value is not None else None


def run(cfg: DictConfig, run_dir: Path, hparams: HParams | None = None, sweep_dir: Path | None = None,
        on_start: Callable[[Start], None] = lambda start: None) -> Outcome:
    """Run `cfg` in `run_dir`. A single run continues what the folder holds with resume=true; a
    job of a sweep (`sweep_dir`) always does (a sweep run again resumes its jobs), stops with its
    sweep, and keeps its progress bars off (the jobs share one terminal). `on_start` runs once
    the start is accepted (the runner records the config there)."""
    run_dir = Path(run_dir)
    if sweep_dir is not None and sweep_stopped(sweep_dir):
        return Outcome("not_started", message="the sweep was stopped")
    try:
        check_values(cfg)  # before the folder is touched
        with claim(run_dir):
            start = decide_start(run_dir, resolved(cfg), rerun=sweep_dir is not None)
            if start.kind == "skip":
                return Outcome("skipped", start.record)
            return _start(cfg, run_dir, start, hparams, sweep_dir, on_start)
    except StartRefused as error:  # nothing was written: the run dir is as it was
        return Outcome("refused", message=str(error))
    finally:
        if sweep_dir is not None:
            release_gpu_memory()  # Ray reuses a worker process for the sweep's next job


def _start(cfg, run_dir, start: Start, hparams, sweep_dir, on_start) -> Outcome:
    device = resolve_device(cfg.trainer.device)
    record, loggers = None, Loggers([])
    try:
        # From here on a signal stops the run: at once while it sets up, then at the next
        # step boundary with a checkpoint (gan_experiments.stop).
        with stop_requests(sweep_dir) as stop:
            try:
                prepared = prepare(cfg, device, cfg.trainer.progress and sweep_dir is None)
                loggers = start_loggers(cfg.logger, LoggedRun(
                    run_dir, run_dir.name, job_group(sweep_dir), start.step if start.kind == "resume" else None))
            except UserError as error:
                raise StartRefused(str(error)) from None
            on_start(start)
            record = RunRecord.begin(run_dir, cfg.trainer.steps, start.step, start.kind == "resume",
                                     prepared.objective, checkpoint.arithmetic(device))
            record.write(run_dir)
            return Outcome("trained", train(cfg, run_dir, device, prepared, start.saved, record, stop,
                                            loggers, hparams))
    except StopNow as error:
        if record is None:  # stopped while the data loaded: not started
            raise StartRefused(f"Stopped by {error.signal_name or 'the sweep'} before the run started.") from None
        if stop.setting_up:  # nothing trained in this leg: the folder's checkpoint stands
            return Outcome("trained", _stopped_before_training(record, start.saved, error, run_dir))
        return Outcome("stopped_at_once", _failed(record, error, run_dir), message=(
            f"Stopped at once by {error}, without a new checkpoint. Continue with: python -m "
            f"gan_experiments resume=true hydra.run.dir={run_dir} (and the same overrides)."), error=error)
    except StartRefused:
        raise
    except Exception as error:
        return failure(record, error, run_dir)
    finally:
        # Where train() did not close them: a stop (interrupted) or a failure while setting up.
        loggers.close("interrupted" if record is not None and record.status == "interrupted" else "failed")


def failure(record: RunRecord | None, error: Exception, run_dir: Path) -> Outcome:
    """A run's failure after its start, recorded (where it has a record) and turned into its
    Outcome; a result file that could not be written gets the paragraph naming the fix."""
    if record is not None:
        _failed(record, error, run_dir)
    if isinstance(error, checkpoint.WriteFailed) or getattr(error, "errno", None) in DISK_FULL:
        paragraph = UserError(write_failure(error, run_dir))
        paragraph.__cause__ = error
        return Outcome("failed", record, str(paragraph), paragraph)
    return Outcome("failed", record, str(error), error)


def _stopped_before_training(record: RunRecord, saved: TrainingState | None, error: StopNow,
                             run_dir: Path) -> RunRecord:
    log.warning("Stopped by %s; nothing to checkpoint.", error)
    record.metrics = measurements(saved.metrics if saved else None)
    record.end("interrupted", record.step, error.signal_name)
    record.write(run_dir)
    return record


def _failed(record: RunRecord, error: BaseException, run_dir: Path) -> RunRecord:
    record.failed(record.step, error)
    try:
        record.write(run_dir)
    except OSError:  # the disk that refused the results refuses the status too
        pass
    return record


def write_failure(error: OSError, run_dir: Path) -> str:
    """The paragraph for a result file that could not be written: which file, the last good
    checkpoint and its step, and how to resume."""
    paths = RunPaths(run_dir)
    try:
        kept = f"The last good checkpoint is {paths.checkpoint}, at step {TrainingState.load(paths.checkpoint).step}"
    except UserError:
        kept = "No checkpoint was written yet"
    return (f"Could not write {error.filename or 'a result file'} ({error.strerror or error}). {kept}. Free space "
            f"(or fix the disk), then continue with: python -m gan_experiments resume=true "
            f"hydra.run.dir={run_dir} (and the same overrides).")

