"""Sweeps on a SLURM cluster: hydra-submitit-launcher's SlurmLauncher (`hydra/launcher=slurm`),
with three things a cluster needs beyond it. Hydra takes launchers only from the hydra_plugins
package: the launcher is hydra_plugins/gan_experiments_slurm/launcher.py, and what it does
lives here.

- A time limit or a preemption does not lose the job's work. submitit asks SLURM for SIGUSR2
  `signal_delay_s` before the limit. The run takes it like SIGTERM (gan_experiments.stop): it
  writes a checkpoint at the next step and ends `interrupted`. Then the job hands the signal to
  submitit's own handler, which pickles this launcher's `checkpoint()` (the same job again) and
  requeues it; the requeued job resumes from the checkpoint. A preemption that sends SIGUSR2
  (SLURM's PreemptParameters=send_user_signal) is handled the same way. `scontrol requeue <job>`
  sends SIGTERM instead: the job checkpoints the same way and, seeing its restart count raised,
  exits without a result, so that the sweep waits for the requeued job. A SIGTERM that SLURM
  has not (yet) counted as a requeue, as from scancel or a preemption without the user signal,
  ends the job `interrupted` with its checkpoint; the same sweep command resumes it.
- A submission that sbatch refuses ends in one paragraph: sbatch's message and the override
  that fixes it.
- A cluster without accounting makes every `sacct` poll fail: said once, and not polled.
"""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from gan_experiments.errors import UserError

log = logging.getLogger(__name__)

# What fixes a refusal, by a phrase of sbatch's message (a "gres" refusal: `refusal`).
FIXES = {
    "invalid partition": "choose a partition that exists (`sinfo -s` lists them): "
                         "hydra.launcher.partition=<name>",
    "node configuration is not available": "ask for no more than a node has (`sinfo -N -l`): "
                                           "lower cpus_per_job or hydra.launcher.mem_gb",
    "memory specification": "lower hydra.launcher.mem_gb to what a node has (`sinfo -N -l`)",
    "time limit": "lower hydra.launcher.timeout_min to the partition's limit (`sinfo -s`)",
    "account": "set your account: +hydra.launcher.additional_parameters.account=<name>",
    "qos": "set a QOS you may use: hydra.launcher.qos=<name>",
}


NO_GPUS = ("the partition has no GPUs: add trainer.device=cpu (the launcher then asks for no "
           "GPU) or hydra.launcher.gpus_per_node=0")
CONS_RES = ("this cluster's scheduler (SelectType=select/cons_res) takes GPUs as generic "
            "resources, not --gpus-per-node: add hydra.launcher.gpus_per_node=null "
            "hydra.launcher.gres=gpu:1")


def refusal(message: str, select_type: str | None = None) -> str:
    """The paragraph for a submission that sbatch refused. `select_type`: the cluster's
    SelectType (`scheduler()`), which tells the two causes of a "gres" refusal apart: only
    select/cons_tres takes --gpus-per-node, so on select/cons_res every GPU request made that
    way is refused, while on cons_tres it is the partition that has no GPUs."""
    message = " ".join(message.split())
    if "gres" in message.lower():
        fix = CONS_RES if select_type == "select/cons_res" else NO_GPUS
    else:
        fix = next((fix for phrase, fix in FIXES.items() if phrase in message.lower()),
                   "check the launcher's settings (python -m gan_experiments hydra/launcher=slurm "
                   "--cfg hydra -p hydra.launcher) against the partition (`sinfo -s`)")
    return (f"SLURM refused the sweep's jobs, so nothing was submitted: {message.rstrip('.')}. "
            f"To fix it, {fix}.")


def _ask(*command: str) -> str | None:
    """What a SLURM client prints, or None where it is missing or fails."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def scheduler() -> str | None:
    """The cluster's SelectType (select/cons_tres, select/cons_res, ...), or None."""
    shown = _ask("scontrol", "show", "config") or ""
    return next((line.split("=", 1)[1].strip() for line in shown.splitlines()
                 if line.split("=", 1)[0].strip() == "SelectType"), None)


def gpus_per_job(device: str, partition: str | None) -> int:
    """GPUs a job asks SLURM for: 1 for trainer.device=cuda, 0 for cpu, and for auto 1 where the
    partition (or the default one) lists a GPU among its generic resources (`sinfo`'s GRES),
    0 where it lists none. Off a SLURM host (no sinfo), auto asks for one: sbatch will say."""
    device = str(device)
    if device != "auto":
        return 0 if device == "cpu" else 1
    shown = _ask("sinfo", "--noheader", "--format=%P %G", *(["--partition", partition] if partition else []))
    if shown is None:
        return 1
    rows = [line.split(maxsplit=1) for line in shown.splitlines() if line.strip()]
    chosen = [gres for name, *gres in rows if partition or name.endswith("*")]
    return int(any("gpu" in " ".join(gres) for gres in chosen))


def check_gpu_sharing(jobs_per_gpu: int) -> None:
    """SLURM gives a job whole GPUs: jobs_per_gpu > 1 cannot be honoured there. Raises
    SystemExit with the paragraph that says so, before anything is submitted."""
    if jobs_per_gpu > 1:
        paragraph = UserError(
            f"jobs_per_gpu={jobs_per_gpu}, but SLURM gives each job whole GPUs, so the jobs "
            f"cannot share one. Nothing was submitted. Drop jobs_per_gpu (each job then gets a "
            f"GPU of its own), or run the sweep on a Ray cluster of the nodes "
            f"(hydra/launcher=parallel hydra.launcher.ray.init.address=auto), where jobs_per_gpu "
            f"packs them.")
        raise SystemExit(f"\nError: {paragraph}\n")


def quiet_sacct() -> None:
    """submitit polls `sacct` for the jobs' states and warns on every poll that fails, as it
    does on every poll of a cluster without job accounting. There, say so once and stop
    polling: submitit then learns that a job ended from the job's result file."""
    try:
        subprocess.run(["sacct", "--noheader", "--jobs", "1"], capture_output=True, text=True,
                       timeout=30, check=True)
        return
    except subprocess.CalledProcessError as error:
        reason = " ".join(error.stderr.split()) or f"exit status {error.returncode}"
    except (OSError, subprocess.SubprocessError):
        return  # no sacct (or no answer): submitit's own message says it
    from submitit.slurm.slurm import SlurmJob

    log.warning("sacct fails on this cluster (%s): the sweep learns that a job ended from the "
                "job's result file, without polling.", reason)
    SlurmJob.watcher._make_command = lambda: None  # submitit skips a poll without a command


def restarts() -> int | None:
    """How many times SLURM has requeued this job so far, as slurmctld says now; None outside
    a SLURM job or when scontrol does not answer."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True,
                               text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    field = next((f for f in shown.split() if f.startswith("Restarts=")), None)
    return int(field.split("=", 1)[1]) if field else None


def launch(submit, jobs_per_gpu: int):
    """Runs `submit()` (the submission of a sweep's jobs), with sacct's warning said once and
    a refused submission said as one paragraph."""
    from submitit.core.utils import FailedJobError

    check_gpu_sharing(jobs_per_gpu)
    quiet_sacct()
    try:
        return submit()
    except FailedJobError as error:
        if "sbatch" not in str(error):  # a job that failed on its node: submitit's own report
            raise
        message = refusal(str(error), scheduler())
    except FileNotFoundError as error:  # no sbatch here
        message = (f"{error.filename} is not on this machine: submit from a SLURM login node, "
                   f"or run the sweep here with hydra/launcher=parallel.")
    raise SystemExit(f"\nError: {UserError(message)}\n")


def run_job(run):
    """Runs one job on its node through `run()` (Hydra's run_job), then requeues it if a time
    limit, a preemption or `scontrol requeue` interrupted it. Returns run()'s JobReturn."""
    from gan_experiments.record import RunRecord  # torch: not at Hydra's plugin scan

    # submitit's SIGUSR2 handler: it pickles the launcher's checkpoint() and requeues this
    # job. The run replaces it while it trains, so the checkpoint is written first.
    requeue_now = signal.getsignal(signal.SIGUSR2)
    restarts_at_start = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        import torch

        # torch starts a thread per core of the node; on a node shared with other jobs, more
        # threads than the job's CPUs made a step 6x slower here.
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
    result = run()
    record = RunRecord.read(Path(result.hydra_cfg.hydra.runtime.output_dir))
    if record is None or record.status != "interrupted" or record.pid != os.getpid():
        return result  # finished, or not started in this leg (a refused start): no requeue
    stopped_by = record.stopped_by
    if stopped_by == "SIGUSR2" and callable(requeue_now):
        print(f"Time limit or preemption: checkpoint written at step {record.step}; "
              f"requeueing the job.", flush=True)
        requeue_now(signal.SIGUSR2, None)  # requeues, then exits
    elif stopped_by == "SIGTERM" and (restarts() or 0) > restarts_at_start:
        # `scontrol requeue`: SLURM starts this job again, and that run resumes. Exiting
        # without a result keeps the sweep waiting for it rather than reporting this one.
        print(f"Requeued by SLURM; checkpoint written at step {record.step}.", flush=True)
        sys.exit(-1)
    return result
