"""Where the parallel launcher (`hydra/launcher=parallel`, Hydra's Ray launcher) puts a sweep's
jobs: how much of a GPU each asks Ray for, and on which GPU.

Both are decided from the Ray cluster's resources, after the driver has joined it, never from
the driver's own torch: a sweep driven from a CPU-only head or login node must still ask for
the GPUs of the nodes that have them, and a sweep with `trainer.device=cpu` asks for none.

Ray puts a fractional GPU request on the GPU with the least room left that fits it, to keep
whole GPUs free; so 9 jobs at a quarter of a GPU each would share GPUs 0-2 and leave the other
five idle. With `jobs_per_gpu` > 1 the jobs therefore go through a placement group of one
bundle per GPU (as many as there are jobs, up to the GPUs free), dealt round-robin: each GPU
gets its share of the sweep, and runs up to `jobs_per_gpu` of them at once. Ray still picks
the GPU ids and sets each job's CUDA_VISIBLE_DEVICES. The price of dealing: a job waits for its
own GPU even when another has room, which costs time where jobs differ much in length.
"""

import logging
import math
import socket
from dataclasses import dataclass

from gan_experiments.errors import UserError

log = logging.getLogger(__name__)

# Long enough for a cluster that has the resources to place the group; past it the sweep runs
# without spreading rather than waiting for resources another sweep holds.
PLACEMENT_TIMEOUT_S = 60
# How often the driver asks its Ray node whether it still answers while the jobs run.
NODE_CHECK_S = 2.0


class ClusterLost(Exception):
    """The Ray node that the sweep's driver joined stopped answering: its raylet died (the OOM
    killer's usual victim), and with it the jobs it ran. ray.get would wait forever."""


def gpu_share(cluster_gpus: float, device: str, jobs_per_gpu: int) -> float:
    """The GPU fraction each job asks Ray for: 1/jobs_per_gpu where the cluster has GPUs and the
    run may train on one (`trainer.device` auto or cuda), else 0. Raises UserError for
    jobs_per_gpu below 1."""
    if jobs_per_gpu < 1:
        raise UserError(f"jobs_per_gpu={jobs_per_gpu}: it is how many jobs share one GPU, at "
                        f"least 1. Use jobs_per_gpu=1 for a GPU per job.")
    if str(device) == "cpu" or cluster_gpus <= 0:
        return 0.0
    return 1.0 / jobs_per_gpu


@dataclass
class Spread:
    """A placement group's bundles, one GPU each, the bundle of each job (round-robin), and
    how many jobs run on one GPU at a time."""

    bundles: list[dict]
    job_bundle: list[int]
    at_once: int


def spread(n_jobs: int, share: float, gpus_free: float, cpus_free: float, cpus_per_job: float) -> Spread | None:
    """The bundles that spread `n_jobs` jobs of `share` GPU each over the free GPUs, or None
    where Ray's own placement already does (a whole GPU per job) or nothing can be spread (no
    GPU share, one job, fewer than two GPUs free). A bundle holds one GPU and the CPUs of the
    jobs that run on it at once, so the group never asks for more CPUs than are free: where CPUs
    are short, fewer jobs run on each GPU at once, then fewer GPUs are used."""
    if not 0 < share < 1 or n_jobs < 2:
        return None
    gpus = min(n_jobs, math.floor(gpus_free + 1e-9))
    at_once = min(math.floor(1 / share + 1e-9), math.ceil(n_jobs / max(gpus, 1)))  # per GPU at a time
    if cpus_per_job > 0:
        at_once = max(1, min(at_once, math.floor(cpus_free / max(gpus, 1) / cpus_per_job)))
        gpus = min(gpus, math.floor(cpus_free / (at_once * cpus_per_job)))
    if gpus < 2:
        return None
    bundle = {"GPU": 1.0, **({"CPU": at_once * cpus_per_job} if cpus_per_job > 0 else {})}
    return Spread([dict(bundle) for _ in range(gpus)], [i % gpus for i in range(n_jobs)], at_once)


# `ray.remote` options that ask for resources a GPU bundle does not hold: a job asking for them
# could never run inside one, so such a sweep is not spread.
OTHER_RESOURCES = ("memory", "resources", "accelerator_type", "object_store_memory", "label_selector")


def job_options(remote: dict, configs: list) -> tuple[list[dict], object | None]:
    """`ray.remote` options for each job, from the launcher's `ray.remote` settings and the
    job's own config (`trainer.device`, `jobs_per_gpu`: either may be swept), and the placement
    group that spreads them (None without one). A `num_gpus` set in `hydra.launcher.ray.remote`
    is taken as it is. Only jobs of one fractional share are spread; a sweep mixing shares
    leaves placement to Ray."""
    import ray

    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    options = []
    for config in configs:
        share = remote.get("num_gpus")
        if share is None:
            share = gpu_share(cluster_gpus, config.trainer.device, config.jobs_per_gpu)
        options.append({**remote, "num_gpus": share})
    shares = sorted({o["num_gpus"] for o in options})
    log.info("Each job asks Ray for %s GPU (%g GPUs in the cluster).", " or ".join(f"{g:g}" for g in shares),
             cluster_gpus)
    fractional = [i for i, o in enumerate(options) if 0 < o["num_gpus"] < 1]
    if len({options[i]["num_gpus"] for i in fractional}) != 1 or any(key in remote for key in OTHER_RESOURCES):
        return options, None
    free = ray.available_resources()
    plan = spread(len(fractional), options[fractional[0]]["num_gpus"], free.get("GPU", 0),
                  free.get("CPU", 0), remote.get("num_cpus", 1))
    if plan is None:
        return options, None
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group(plan.bundles, strategy="PACK")
    if not group.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
        remove_placement_group(group)
        log.warning("Ray could not reserve %d GPUs for the sweep within %d s (another sweep holds "
                    "them?); its jobs share GPUs as Ray places them.", len(plan.bundles),
                    PLACEMENT_TIMEOUT_S)
        return options, None
    log.info("%d jobs spread over %d GPUs, up to %d at once on each.", len(fractional),
             len(plan.bundles), plan.at_once)
    for job, bundle in zip(fractional, plan.job_bundle, strict=True):
        options[job]["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=bundle)
    return options, group


def launch(launcher, job_overrides, initial_job_idx: int):
    """Hydra's Ray launcher's `launch` (hydra_ray_launcher._core), with `ray.remote` options of
    each job's own (`job_options`): returns the jobs' JobReturns in order."""
    from pathlib import Path

    import ray
    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, filter_overrides, setup_globals
    from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job, start_ray
    from omegaconf import OmegaConf, open_dict

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info("Ray Launcher is launching %d jobs, sweep output dir: %s", len(job_overrides), sweep_dir)
    start_ray(launcher.ray_cfg.init)
    remote = OmegaConf.to_container(launcher.ray_cfg.remote, resolve=True) or {}
    configs = []
    for offset, overrides in enumerate(job_overrides):
        idx = initial_job_idx + offset
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"job_id_for_{idx}"
            sweep_config.hydra.job.num = idx
        configs.append(sweep_config)
    try:
        options, group = job_options(remote, configs)
    except UserError as error:  # before any job starts: one paragraph, as a refused start
        raise SystemExit(f"\nError: {error} No job was started.\n") from None
    try:
        runs = [ray.remote(**option)(_run_job).remote(
            hydra_context=launcher.hydra_context, sweep_config=config,
            task_function=launcher.task_function, singleton_state=Singleton.get_state())
            for config, option in zip(configs, options, strict=True)]
        return wait_for_jobs(runs, driver_node())
    except ClusterLost as error:
        stop_lost_sweep(sweep_dir, str(error))  # exits: nothing of Ray's may be asked any more
    finally:
        if group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(group)


def driver_node() -> tuple[str, int]:
    """The address and port of the raylet that this driver joined."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    return node["NodeManagerAddress"], node["NodeManagerPort"]


def answers(address: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether a raylet listens at address:port. A dead one's port refuses at once."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_jobs(runs: list, node: tuple[str, int], every_s: float = NODE_CHECK_S) -> list:
    """ray.get of every job, in order. Raises ClusterLost within `every_s` seconds (plus a
    second check's) of the driver's raylet (`node`) ending."""
    import ray

    pending, silent = list(runs), 0
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=every_s)
        silent = 0 if not pending or answers(*node) else silent + 1
        if silent >= 2:  # twice in a row: not a busy moment
            raise ClusterLost(f"the Ray node at {node[0]}:{node[1]} (its raylet) stopped answering")
    return ray.get(runs)


def stop_lost_sweep(sweep_dir, why: str) -> None:
    """After ClusterLost: each job still recorded `running` is recorded `stopped` (its process
    died with the raylet; its last checkpoint stands), the status table is printed, and the
    driver exits non-zero at once (Ray's own exit handlers would wait for the dead cluster)."""
    import os
    import sys

    from gan_experiments.sweep import record_lost_jobs, write_status_table

    lost = record_lost_jobs(sweep_dir, f"Ray: {why}")
    write_status_table(sweep_dir)
    print(f"\nError: {why[0].upper() + why[1:]}, so the sweep stopped: {len(lost)} job"
          f"{'s' * (len(lost) != 1)} that were training are recorded `stopped` ({', '.join(lost) or 'none'}). "
          f"Restart Ray (or free the memory it ran out of), then run the same command again: "
          f"finished jobs are skipped, the others resume from their checkpoints.", flush=True)
    sys.stderr.flush()
    os._exit(1)
