"""Sweeps through `hydra/launcher=slurm` against a real single-node SLURM cluster started for
these tests (tests/slurm_cluster.py); skipped, with the reason, where it cannot start.
submitit_local's tests (test_sweep.py) stay the fast check of the submitit path."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import LocalSlurm, unavailable_reason

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RING = ["model=mlp", "data=ring", "trainer.device=cpu"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    local = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        local.start()
    except (OSError, subprocess.SubprocessError, RuntimeError) as error:
        local.stop()
        pytest.skip(f"the local SLURM cluster did not start: {error}")
    yield local
    local.stop()


def sweep_command(sweep_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "gan_experiments", "-m", "hydra/launcher=slurm",
            "hydra.launcher.partition=debug", "hydra.launcher.mem_gb=1",
            f"hydra.sweep.dir={sweep_dir}", *overrides]


def statuses(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/status.json")}


def test_a_cpu_partition_runs_the_sweep_with_one_line_about_accounting(cluster, tmp_path):
    """trainer.device=auto on a partition without GPUs asks for none (it used to ask for one
    and be refused)."""
    done = subprocess.run(sweep_command(tmp_path, *RING, "trainer.device=auto", "trainer.steps=50", "seed=0,1"),
                          env=cluster.env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [s["status"] for s in statuses(tmp_path).values()] == ["ok", "ok"]
    assert "2 jobs: 2 ok" in done.stdout
    # This cluster has no accounting: sacct fails, which is said once, not on every poll.
    said = done.stdout + done.stderr
    assert said.count("sacct") == 1 and "Bypassing sacct error" not in said


def test_a_gpu_request_on_a_cpu_partition_is_one_paragraph(cluster, tmp_path):
    done = subprocess.run(sweep_command(tmp_path, "model=mlp", "data=ring", "trainer.device=cuda", "seed=0,1"),
                          env=cluster.env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    error = done.stderr[done.stderr.index("Error: "):]
    assert "SLURM refused the sweep's jobs" in error and "gres" in error
    assert "trainer.device=cpu" in error  # the override that fixes it
    assert not statuses(tmp_path)  # nothing ran


def test_time_limit_and_requeue_checkpoint_and_resume_to_the_same_result(cluster, tmp_path):
    """A 3-minute limit: SIGUSR2 90 s before it (SLURM sends it up to 30 s sooner), a
    checkpoint, submitit's requeue, SLURM's 2-minute hold, a resume. And a job requeued by
    `scontrol requeue` while it trains. Both end `ok` with the metrics of an uninterrupted run
    of the same seed."""
    # A job trains about 50-80 s before its SIGUSR2. 50 ms of sleep in each step makes 1,600
    # steps last about 95 s on any machine: two legs.
    steps = 1600
    run = [*RING, f"trainer.steps={steps}", "trainer.checkpoint_every=100",
           "loss.generator._target_=conftest.SlowNonsaturating", "loss.generator._partial_=false",
           "+loss.generator.seconds=0.05"]
    tests_on_path = {"PYTHONPATH": str(REPO / "tests")}  # the jobs import conftest's loss
    sweeps = {"time_limit": (0, "hydra.launcher.timeout_min=3"),
              "requeue": (1, "hydra.launcher.timeout_min=10")}
    drivers = {name: subprocess.Popen(
        sweep_command(tmp_path / name, *run, f"seed={seed}", limit,
                      "hydra.launcher.signal_delay_s=90"),
        env={**cluster.env(), **tests_on_path}, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for name, (seed, limit) in sweeps.items()}
    try:
        # Requeue the second job by hand once it has trained 200 steps (its checkpoint).
        job_dir = next_run_dir(tmp_path / "requeue", drivers["requeue"])
        deadline = time.monotonic() + 300
        while read_json(job_dir / "status.json").get("step", 0) < 200:
            assert time.monotonic() < deadline and drivers["requeue"].poll() is None, \
                "the job never trained"
            time.sleep(0.2)
        cluster.run("scontrol", "requeue", job_id(tmp_path / "requeue"), check=True)
        # Meanwhile, the uninterrupted runs to compare with, on one thread as the jobs.
        references = [subprocess.Popen(
            [sys.executable, "-m", "gan_experiments", *run, f"seed={seed}",
             "trainer.progress=false", f"hydra.run.dir={tmp_path}/ref{seed}"],
            env={**os.environ, **tests_on_path, "OMP_NUM_THREADS": "1"}, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for seed in (0, 1)]
        assert [r.wait(timeout=900) for r in references] == [0, 0]
        outputs = {name: d.communicate(timeout=1500)[0] for name, d in drivers.items()}
    finally:
        for driver in drivers.values():
            if driver.poll() is None:
                driver.kill()
    for name, (seed, _) in sweeps.items():
        assert drivers[name].returncode == 0, outputs[name][-3000:]
        (final,) = statuses(tmp_path / name).values()
        reference = read_json(tmp_path / f"ref{seed}" / "status.json")
        assert final["status"] == "ok" and final["step"] == steps
        assert final["resumed_from_step"] > 0
        assert {k: v["value"] for k, v in final["metrics"].items()} == \
            {k: v["value"] for k, v in reference["metrics"].items()}  # bit-exact on CPU
    log = "".join(p.read_text() for p in (tmp_path / "time_limit").glob(".submitit/*/*_log.out"))
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log and "resuming" in log
    log = "".join(p.read_text() for p in (tmp_path / "requeue").glob(".submitit/*/*_log.out"))
    assert re.search(r"Requeued by SLURM; checkpoint written at step \d+", log) and "resuming" in log


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def next_run_dir(sweep_dir: Path, driver: subprocess.Popen, timeout: float = 120) -> Path:
    """The folder of a one-job sweep's job, once it exists."""
    deadline = time.monotonic() + timeout
    while not (found := [p.parent for p in sweep_dir.glob("*/status.json")]):
        assert time.monotonic() < deadline and driver.poll() is None, "the job never started"
        time.sleep(0.2)
    return found[0]


def job_id(sweep_dir: Path) -> str:
    """The SLURM job id of a one-job sweep: the name of submitit's folder for it."""
    (found,) = [p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+", p.name)]
    return found
