"""What a multirun adds to a single run: GPU shares for Ray's scheduler, skipping and resuming
jobs of a sweep that is run again, a quiet terminal, and the sweep's status table."""

import csv
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

FINAL = ("ok", "diverged")  # re-running these would only repeat them


def gpus_per_job(jobs_per_gpu: int) -> float:
    """Ray's per-task GPU request: 1/k of a GPU packs k jobs on each, 0 when there is none.
    Ray then sets CUDA_VISIBLE_DEVICES so each job sees only its own GPU."""
    import torch

    if jobs_per_gpu < 1:
        raise ValueError(f"jobs_per_gpu must be at least 1, got {jobs_per_gpu}")
    return 1.0 / jobs_per_gpu if torch.cuda.is_available() else 0.0


def job_dirname(override_dirname: str, limit: int = 150) -> str:
    """A job's folder name from its overrides (`loss=smooth,seed=1`), safe as one path part:
    no slashes from path values, and long names cut with a hash that keeps them unique."""
    name = override_dirname.replace("/", "|") or "defaults"
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}~{digest}"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("gpus_per_job", gpus_per_job, replace=True)
    OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def prepare_job(cfg: DictConfig, run_dir: Path) -> dict | None:
    """For a job of a sweep that runs again in the same sweep dir: the finished summary to
    reuse (the job is skipped), or None to train, resuming from the job's checkpoint if an
    earlier attempt left one."""
    status = read_status(run_dir)
    if status.get("status") in FINAL:
        return status
    if (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        cfg.resume = True
    return None


def release_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def quiet_console() -> None:
    """Parallel jobs would interleave their logs: keep them in each job's log file only."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)


def find_runs(sweep_dir: Path, pattern: str = "*/status.json") -> list[dict]:
    """Every run under `sweep_dir`: its folder, command-line overrides and status.json."""
    runs = []
    for status_file in sorted(Path(sweep_dir).glob(pattern)):
        run_dir = status_file.parent
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        runs.append({"dir": run_dir, "overrides": overrides or [],
                     "status": read_status(run_dir) or {"status": "failed"}})
    return runs


def job_rows(sweep_dir: Path) -> list[dict]:
    rows = []
    for run in find_runs(sweep_dir):
        run_dir, overrides, status = run["dir"], run["overrides"], run["status"]
        value = status.get("value", math.nan)
        rows.append({
            "overrides": " ".join(overrides or []),
            "status": status.get("status", "failed"),
            "step": status.get("step", 0),
            "objective": status.get("objective", ""),
            "value": value if isinstance(value, (int, float)) else math.nan,
            "run_dir": str(run_dir),
        })
    return rows


def write_status_table(sweep_dir: Path) -> list[dict]:
    rows = job_rows(sweep_dir)
    columns = ["overrides", "status", "step", "objective", "value", "run_dir"]
    with open(Path(sweep_dir) / "sweep_status.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    cells = [[str(r[c]) if c != "value" else f"{r[c]:.4g}" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "diverged", "interrupted", "failed")}
    print("\n".join(lines), file=sys.stdout)
    print(f"\n{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + f". Table: {Path(sweep_dir) / 'sweep_status.csv'}\n"
          f"Compare them: tensorboard --logdir {sweep_dir}   |   "
          f"python -m gan_experiments.report {sweep_dir}")
    return rows


class SweepStatus(Callback):
    """Prints and saves the status table once every job of a multirun has returned."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            # Ray forwards the jobs' lines from their log files about once a second: give it
            # that second, then stop it, so the lines come before the table, not after it.
            time.sleep(1.5)
            ray.shutdown()
        write_status_table(Path(config.hydra.sweep.dir))
