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

from gan_experiments import checkpoint
from gan_experiments.config import register_configs
from gan_experiments.errors import UserError
from gan_experiments.lifecycle import RunPaths, StartRefused, claim, decide_start

# Ray pickles this module's main(): it may reference functions and classes, not an Event.
from gan_experiments.stop import StopNow, stop_sweep_on_signals, sweep_stopped
from gan_experiments.summaries import HParams
from gan_experiments.sweep import quiet_console, register_resolvers, release_gpu_memory, swept_keys
from gan_experiments.train import final_value, resolved, train

log = logging.getLogger("gan_experiments")
# Ray folds similar lines from different jobs into "[repeated 2x]": each job's start and end
# line must show.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
register_configs()
register_resolvers()


def run_hparams(cfg: DictConfig, choices: dict, swept: set[str]) -> HParams:
    """What the HPARAMS tab compares: the swept values and the chosen config options lead,
    then every other setting."""
    flat = checkpoint.flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    # A preset's published numbers are no setting of the run.
    settings = {k: v for k, v in flat.items()
                if not k.endswith(("_target_", "_partial_")) and not k.startswith("reference.")}
    groups = {k: v for k, v in choices.items() if not k.startswith("hydra") and v is not None}
    varied = {k: groups.get(k, settings.get(k)) for k in sorted(swept) if k in groups or k in settings}
    return HParams({**varied, **groups, **settings}, leading=(*varied, *groups))


def save_hydra_files(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """What Hydra writes into .hydra/ (conf/config.yaml sets hydra.output_subdir to null so
    Hydra does not), written only once the start is accepted: a refused start must leave an
    earlier run's record as it was."""
    paths = RunPaths(run_dir)
    paths.hydra.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, paths.config, resolve=True)  # what decide_start compares a restart with
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), paths.hydra / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, paths.overrides)


def describe(summary: dict) -> str:
    """The run's headline number as one phrase."""
    value = summary.get("value")
    shown = "not measured" if value is None else f"{value:.4g}"
    return f"{summary.get('objective') or 'objective'} = {shown}"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    job = f"[job {hydra_cfg.job.num}] {run_dir.name}" if multirun else str(run_dir)
    swept: set[str] = set()
    # A job's folder is one part below its sweep's (sweep.job_dirname), and absolute: with
    # hydra.job.chdir=true a job runs in it, and a relative hydra.sweep.dir would be the job's.
    sweep_dir = run_dir.parent if multirun else None
    if multirun:
        if sweep_stopped(sweep_dir):
            print(f"{job}: not started: the sweep was stopped", flush=True)
            return None
        if hydra_cfg.launcher._target_.endswith(".BasicLauncher"):
            # The jobs run one after another in the driver: a signal between two of them stops
            # the sweep. (Other launchers run a job in a process of its own, whose signals
            # belong to the run: submitit's SLURM job must requeue on its time limit alone.)
            stop_sweep_on_signals(sweep_dir)
        quiet_console()
        optuna = "optuna" in str(hydra_cfg.sweeper.get("_target_", ""))
        swept = ({o.split("=", 1)[0] for o in hydra_cfg.overrides.task} if optuna
                 else swept_keys(sweep_dir))
    try:
        with claim(run_dir):
            # A sweep run again continues its jobs; a single run does so with resume=true.
            start = decide_start(run_dir, resolved(cfg), rerun=multirun)
            if start.kind == "skip":
                summary = start.status
                print(f"{job}: already {summary['status']}, skipped" if multirun else
                      f"\n{run_dir} already finished ({summary['status']} at step "
                      f"{summary['step']}); nothing to do."
                      + (" Raise trainer.steps to train it further." if summary["status"] == "ok"
                         else ""),
                      flush=True)
                return final_value(summary)
            if multirun:
                print(f"{job}: {'resuming' if start.kind == 'resume' else 'started'}", flush=True)
            summary = train(cfg, run_dir, run_hparams(cfg, dict(hydra_cfg.runtime.choices), swept),
                            on_start=lambda: save_hydra_files(run_dir, cfg, hydra_cfg), start=start,
                            sweep_dir=sweep_dir)
    except StartRefused as error:  # nothing was written: the run dir is as it was
        if multirun:
            print(f"{job}: start refused: {error}", flush=True)
            return None
        sys.exit(f"\nError: {error} Nothing was written into {run_dir}.\n")
    except StopNow as error:  # a second signal: stopped at once, status `failed`
        message = (f"Stopped at once by {error}, without a new checkpoint. Continue with: python -m "
                   f"gan_experiments resume=true hydra.run.dir={run_dir} (and the same overrides).")
        if multirun:
            print(f"{job}: {message}", flush=True)
            return None
        sys.exit(f"\n{message}\n")
    except Exception as error:  # train() has recorded status `failed` if the start was accepted
        if multirun:  # one failed job must not stop the sweep
            log.exception("Job failed")  # the traceback goes to the job's own log file
            release_gpu_memory()
            print(f"{job}: failed: {error} (log: {run_dir})", flush=True)
            return None
        if not isinstance(error, UserError):
            raise
        sys.exit(f"\nError: {error}\n")
    value = final_value(summary)
    if multirun:
        release_gpu_memory()  # Ray reuses this worker process for the sweep's next job
        shown = "–" if value is None else f"{value:.4g}"
        print(f"{job}: {summary['status']} at step {summary['step']}, {summary['objective']}={shown}",
              flush=True)
    else:
        grid = RunPaths(run_dir).last_sample()
        print(f"\nRun finished ({summary['status']}, step {summary['step']}): {describe(summary)}\n"
              f"Outputs: {run_dir}\n"
              + (f"Sample grid: {grid}\n" if grid else "")
              + f"View it with: tensorboard --logdir {run_dir}")
    return value


if __name__ == "__main__":
    main()
