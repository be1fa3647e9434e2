"""`python -m gan_experiments [overrides]`: compose conf/, train, report where the results are.
With `-m`, every combination of the overrides' values is a job of a sweep."""

import logging
import math
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
from gan_experiments.sweep import prepare_job, quiet_console, read_status, release_gpu_memory
from gan_experiments.train import final_value, train

log = logging.getLogger("gan_experiments")
# Ray folds similar lines from different jobs into "[repeated 2x]": each job's start and end
# line must show.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
register_configs()


def run_hparams(cfg: DictConfig, choices: dict) -> dict:
    """What the HPARAMS tab compares: the chosen config options plus every setting."""
    flat = checkpoint.flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    settings = {k: v for k, v in flat.items() if not k.endswith(("_target_", "_partial_"))}
    groups = {k: v for k, v in choices.items() if not k.startswith("hydra") and v is not None}
    return {**groups, **settings}


def mark_failed(run_dir: Path, error: Exception) -> None:
    step = read_status(run_dir).get("step", 0)
    checkpoint.write_json(run_dir / "status.json", {"status": "failed", "step": step, "error": str(error)})


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:
        job = f"[job {hydra_cfg.job.num}] {hydra_cfg.job.override_dirname or '(defaults)'}"
        quiet_console()
        cfg.trainer.progress = False
        finished = prepare_job(cfg, run_dir)
        if finished is not None:
            print(f"{job}: already {finished['status']}, skipped", flush=True)
            return final_value(finished)
        print(f"{job}: {'resuming' if cfg.resume else 'started'}", flush=True)
    try:
        summary = train(cfg, run_dir, run_hparams(cfg, dict(hydra_cfg.runtime.choices)))
    except Exception as error:
        mark_failed(run_dir, error)
        if multirun:  # one failed job must not stop the sweep
            log.exception("Job failed")  # the traceback goes to the job's own log file
            release_gpu_memory()
            print(f"{job}: failed: {error} (log: {run_dir})", flush=True)
            return math.nan
        if not isinstance(error, UserError):
            raise
        sys.exit(f"\nError: {error}\n")
    if multirun:
        release_gpu_memory()  # Ray reuses this worker process for the sweep's next job
        print(f"{job}: {summary['status']} at step {summary['step']}, "
              f"{summary['objective']}={final_value(summary):.4g}", flush=True)
    else:
        print(f"\nRun finished ({summary['status']}, step {summary['step']}). Outputs: {run_dir}\n"
              f"View it with: tensorboard --logdir {run_dir}")
    return final_value(summary)


if __name__ == "__main__":
    main()
