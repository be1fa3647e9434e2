"""What a multirun adds to a single run: job folder names, a quiet terminal, and the sweep's
status table. Where its jobs run on Ray is `placement`'s decision; whether a job of a sweep run
again is skipped, resumed or refused is `lifecycle.decide_start`'s, as for a single run."""

import csv
import hashlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gan_experiments import slurm
from gan_experiments.lifecycle import result_neutral
from gan_experiments.paths import RunPaths
from gan_experiments.record import STATUSES, RunRecord
from gan_experiments.stop import MARKER, restore_signals, stop_sweep_on_signals, sweep_stopped

log = logging.getLogger(__name__)


def swept_keys(sweep_dir: str | Path) -> set[str]:
    """The keys that take more than one value in the sweep whose multirun.yaml (written by
    Hydra's basic sweeper before any job starts) is in `sweep_dir`: swept on the command line or
    in a preset's sweeper params. (Optuna writes none; its trials are named by number.)"""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        sweep = OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra
    except (OSError, ValueError):
        return set()
    params = sweep.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(sweep.overrides.task)
    keys = set()
    for override in OverridesParser.create().parse_overrides(arguments):
        if override.is_sweep_override():
            try:
                several = len(list(override.sweep_string_iterator())) > 1
            except Exception:  # interval() and glob() cannot be listed here: they vary
                several = True
            if several:
                keys.add(override.get_key_element().lstrip("+~"))
    return keys


def _safe_part(name: str, limit: int = 150) -> str:
    """One path part: no slashes from path values, and names over `limit` bytes of UTF-8 (file
    systems allow 255 bytes, however few characters that is) cut with a hash that keeps them
    unique."""
    name = name.replace("/", "|") or "defaults"
    encoded = name.encode()
    if len(encoded) <= limit:
        return name
    digest = hashlib.sha1(encoded).hexdigest()[:8]
    return f"{encoded[: limit - 9].decode(errors='ignore')}~{digest}"


# Paths name no folder (and a changed one is refused at the start, so they never tell two
# jobs of one sweep folder apart).
PATH_KEYS = ("data.root", "data.path")


def job_dirname(overrides, sweep_dir: str, sweeper: str, job_num: int) -> str:
    """A job's folder, named by what differs between the sweep's jobs (`seed=1`,
    `loss=smooth,seed=1`): TensorBoard's run selector cuts long names, and the constant
    overrides stay in multirun.yaml. Optuna's trials differ in every searched value, so they
    are numbered (`trial=7`) and their values go to the run's hparams. When nothing varies (or
    multirun.yaml is out of reach), every override names it, less the result-neutral ones and
    PATH_KEYS, sorted, as Hydra's override_dirname would."""
    if "optuna" in str(sweeper):
        return f"trial={job_num}"
    swept = swept_keys(sweep_dir)
    pairs = sorted(o.split("=", 1) for o in overrides if "=" in o)
    named = [f"{override_key(key)}={value}" for key, value in pairs if override_key(key) in swept]
    every = sorted(o for o in overrides if not result_neutral(override_key(o)) and override_key(o) not in PATH_KEYS)
    return _safe_part(",".join(named) or ",".join(every))


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
    # Hydra's Ray launcher caps the object store of a Ray it starts, but Ray refuses that
    # setting when joining an existing cluster.
    OmegaConf.register_new_resolver(
        "ray_object_store", lambda address: 78_643_200 if address in (None, "local") else None,
        replace=True)
    # A SLURM job asks for a GPU where it may train on one: a CPU partition refuses any GPU
    # request.
    OmegaConf.register_new_resolver("slurm_gpus", slurm.gpus_per_job, replace=True)


def override_key(override: str) -> str:
    """`+trainer.steps=5` -> `trainer.steps`."""
    return override.split("=", 1)[0].lstrip("+~")


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


@dataclass
class Run:
    """A run folder of a sweep: its command-line overrides (less the result-neutral ones) and
    its record (an unreadable status.json reads as failed: it claims nothing)."""

    dir: Path
    overrides: list[str]
    record: RunRecord


def optuna_problems(config: DictConfig) -> list[str]:
    """For an Optuna sweep: 'key=value: why' for each search-space entry (hydra.sweeper.params
    and the command line's sweep overrides) that Optuna would refuse, found with the plugin's own
    parser before any trial starts (a log interval from 0, an empty interval)."""
    if "optuna" not in str(config.hydra.sweeper.get("_target_", "")):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    problems = []
    for argument in arguments:
        try:
            (override,) = OverridesParser.create().parse_overrides([argument])
            if override.is_sweep_override():
                create_optuna_distribution_from_override(override)
        except Exception as error:  # Optuna and the parser raise ValueError, AssertionError, ...
            problems.append(f"{argument}: {' '.join(str(error).split()).rstrip('.') or type(error).__name__}")
    return problems


def find_runs(sweep_dir: Path, pattern: str = "*/status.json") -> list[Run]:
    """Every run under `sweep_dir` whose folder has a status.json matching `pattern`."""
    runs = []
    for status_file in sorted(Path(sweep_dir).glob(pattern)):
        run_dir = status_file.parent
        overrides_file = RunPaths(run_dir).overrides
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        overrides = [o for o in overrides or [] if not result_neutral(override_key(o))]
        runs.append(Run(run_dir, overrides, RunRecord.read(run_dir) or RunRecord("failed", 0, 0)))
    return runs


def record_lost_jobs(sweep_dir: Path, why: str) -> list[str]:
    """Records each job of the sweep that is still `running` as `stopped` (`why`): its process
    was lost from outside. Returns their folder names."""
    lost = [run for run in find_runs(sweep_dir) if run.record.status == "running"]
    for run in lost:
        run.record.lost(why)
        run.record.write(run.dir)
    return [run.dir.name for run in lost]


def job_rows(sweep_dir: Path) -> list[dict]:
    """The sweep table's rows, one per job, as the CSV writes them."""
    return [{"overrides": " ".join(run.overrides), "status": run.record.status, "step": run.record.step,
             "objective": run.record.objective, "value": run.record.value, "run_dir": str(run.dir)}
            for run in find_runs(sweep_dir)]


def write_status_table(sweep_dir: Path) -> list[dict]:
    rows = job_rows(sweep_dir)
    columns = ["overrides", "status", "step", "objective", "value", "run_dir"]
    with open(Path(sweep_dir) / "sweep_status.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    cells = [[("–" if r[c] is None else f"{r[c]:.4g}") if c == "value" else str(r[c]) for c in columns]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    # A refused start writes nothing into its job's folder, so it is no job of the table.
    unstarted = sorted(d.name for d in Path(sweep_dir).iterdir()
                       if d.is_dir() and not RunPaths(d).status.exists() and not d.name.startswith("."))
    print("\n".join(lines), file=sys.stdout)
    print(f"\n{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + (f". Not started (start refused, or the sweep was stopped; see its output): {', '.join(unstarted)}" if unstarted else "")
          + f". Table: {Path(sweep_dir) / 'sweep_status.csv'}\n"
          f"Compare them: tensorboard --logdir {sweep_dir}   |   "
          f"python -m gan_experiments.report {sweep_dir}")
    return rows


class SweepStatus(Callback):
    """Passes a stop on to a Ray sweep's jobs; prints and saves the status table once every
    job of a multirun has returned."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        (sweep_dir / MARKER).unlink(missing_ok=True)  # an earlier stop; this run resumes the sweep
        if "ray" in str(config.hydra.launcher.get("_target_", "")).lower():
            import ray

            # Started as Hydra's launcher would (it then finds Ray running), so that the
            # driver's stop handlers replace the SIGTERM handler ray.init installs.
            if not ray.is_initialized():
                ray.init(**OmegaConf.to_container(config.hydra.launcher.ray.init, resolve=True))
            stop_sweep_on_signals(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        restore_signals()
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            # Ray forwards the jobs' lines from their log files about once a second: give it
            # that second, then stop it, so the lines come before the table, not after it.
            time.sleep(1.5)
            ray.shutdown()
        write_status_table(Path(config.hydra.sweep.dir))
        if sweep_stopped(config.hydra.sweep.dir):
            print("The sweep was stopped by a signal. Run the same command again to resume it: "
                  "finished jobs are skipped, interrupted ones resume from their checkpoints.")
