"""`python -m gan_experiments [overrides]`: compose conf/, train, report where the results are.
With `-m`, every combination of the overrides' values is a job of a sweep."""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gan_experiments.config import check_yaml_files, register_configs
from gan_experiments.errors import UserError
from gan_experiments.lifecycle import Start
from gan_experiments.paths import RunPaths

# Ray pickles this module's main(): it may reference functions and classes, not an Event.
from gan_experiments.run import Outcome, run
from gan_experiments.stop import stop_sweep_on_signals
from gan_experiments.summaries import run_hparams
from gan_experiments.sweep import quiet_console, register_resolvers, swept_keys

log = logging.getLogger("gan_experiments")
# Ray folds similar lines from different jobs into "[repeated 2x]": each job's start and end
# line must show.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
register_configs()
register_resolvers()


def save_hydra_files(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """What Hydra writes into .hydra/ (conf/config.yaml sets hydra.output_subdir to null so
    Hydra does not), written only once the start is accepted: a refused start must leave an
    earlier run's record as it was."""
    paths = RunPaths(run_dir)
    paths.hydra.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, paths.config, resolve=True)  # what decide_start compares a restart with
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), paths.hydra / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, paths.overrides)


def job_line(outcome: Outcome, job: str, run_dir: Path) -> str:
    """A sweep job's line in the driver's output."""
    record = outcome.record
    if outcome.kind == "skipped":
        return f"{job}: already {record.status}, skipped"
    if outcome.kind == "not_started":
        return f"{job}: not started: {outcome.message}"
    if outcome.kind == "refused":
        return f"{job}: start refused: {outcome.message}"
    if outcome.kind in ("failed", "stopped_at_once"):
        return f"{job}: {'failed: ' * (outcome.kind == 'failed')}{outcome.message} (log: {run_dir})"
    shown = "–" if record.value is None else f"{record.value:.4g}"
    return f"{job}: {record.status} at step {record.step}, {record.objective}={shown}"


def run_lines(outcome: Outcome, run_dir: Path) -> str:
    """A single run's closing lines."""
    record = outcome.record
    if outcome.kind == "skipped":
        return (f"\n{run_dir} already finished ({record.status} at step {record.step}); nothing to do."
                + (" Raise trainer.steps to train it further." if record.status == "ok" else ""))
    value = "not measured" if record.value is None else f"{record.value:.4g}"
    grid = RunPaths(run_dir).last_sample()
    return (f"\nRun finished ({record.status}, step {record.step}): {record.objective or 'objective'} = "
            f"{value}\nOutputs: {run_dir}\n" + (f"Sample grid: {grid}\n" if grid else "")
            + f"View it with: tensorboard --logdir {run_dir}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    # A job's folder is one part below its sweep's (sweep.job_dirname), and absolute: with
    # hydra.job.chdir=true a job runs in it, and a relative hydra.sweep.dir would be the job's.
    sweep_dir = run_dir.parent if multirun else None
    swept = join_sweep(hydra_cfg, sweep_dir) if multirun else set()
    job = f"[job {hydra_cfg.job.num}] {run_dir.name}" if multirun else str(run_dir)

    def on_start(start: Start) -> None:
        save_hydra_files(run_dir, cfg, hydra_cfg)
        if multirun:
            print(f"{job}: {'resuming' if start.kind == 'resume' else 'started'}", flush=True)

    outcome = run(cfg, run_dir, run_hparams(cfg, dict(hydra_cfg.runtime.choices), swept), sweep_dir, on_start)
    if multirun:  # one failed job must not stop the sweep
        if outcome.kind == "failed":
            log.error("Job failed", exc_info=outcome.error)  # the traceback goes to the job's log file
        print(job_line(outcome, job, run_dir), flush=True)
    elif outcome.kind == "refused":
        sys.exit(f"\nError: {outcome.message} Nothing was written into {run_dir}.\n")
    elif outcome.kind == "stopped_at_once":
        sys.exit(f"\n{outcome.message}\n")
    elif outcome.kind == "failed":
        if not isinstance(outcome.error, UserError):
            raise outcome.error  # a bug: its traceback
        sys.exit(f"\nError: {outcome.message}\n")
    else:
        print(run_lines(outcome, run_dir))
    return outcome.value


def join_sweep(hydra_cfg, sweep_dir: Path) -> set[str]:
    """A job's part in its sweep: the driver's signals where the job runs in it, a quiet
    console; returns the keys the sweep varies (for the HPARAMS tab)."""
    if hydra_cfg.launcher._target_.endswith(".BasicLauncher"):
        # The jobs run one after another in the driver: a signal between two of them stops
        # the sweep. (Other launchers run a job in a process of its own, whose signals
        # belong to the run: submitit's SLURM job must requeue on its time limit alone.)
        stop_sweep_on_signals(sweep_dir)
    quiet_console()
    if "optuna" in str(hydra_cfg.sweeper.get("_target_", "")):
        return {o.split("=", 1)[0] for o in hydra_cfg.overrides.task}
    return swept_keys(sweep_dir)


if __name__ == "__main__":
    check_yaml_files(sys.argv[1:])
    main()
