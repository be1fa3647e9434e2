"""Sweeps through the real launchers: Ray on a local instance, submitit's local executor."""

import csv
import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from hydra import compose, initialize_config_dir

from conftest import CONF, TINY, TINY_MODEL
from gan_experiments.sweep import gpus_per_job, job_dirname


def sweep(*args, cwd, preset=(), timeout=300):
    """A sweep of tiny ring jobs; the tiny settings come from a preset in a user config dir,
    as a researcher would keep them, so job folders are named by the swept values alone."""
    preset_file = cwd / "my_conf" / "experiment" / "tiny_ring.yaml"
    preset_file.parent.mkdir(parents=True, exist_ok=True)
    preset_file.write_text(_nest([*TINY, *TINY_MODEL["mlp"], *preset]))
    return subprocess.run(
        [sys.executable, "-m", "gan_experiments", "-m", "--config-dir", str(cwd / "my_conf"),
         "+experiment=tiny_ring", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _nest(settings):
    tree = {}
    for override in settings:
        key, value = override.split("=", 1)
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    header = "# @package _global_\ndefaults:\n  - override /data: ring\n  - override /model: mlp\n"
    return header + yaml.safe_dump(tree)


def status_table(sweep_dir):
    with open(sweep_dir / "sweep_status.csv") as f:
        return {row["overrides"]: row for row in csv.DictReader(f)}


def test_parallel_sweep_isolates_a_failure_and_skips_finished_jobs_when_rerun(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["model.latent_dim=8,-1", f"hydra.sweep.dir={sweep_dir}"]
    result = sweep(*args, cwd=tmp_path, preset=["trainer.steps=300"])
    assert result.returncode == 0, result.stderr
    good = sweep_dir / "+experiment=tiny_ring,model.latent_dim=8"
    bad = sweep_dir / "+experiment=tiny_ring,model.latent_dim=-1"
    table = status_table(sweep_dir)
    assert {k.split()[-1]: row["status"] for k, row in table.items()} == {
        "model.latent_dim=8": "ok", "model.latent_dim=-1": "failed"}
    assert table[next(k for k in table if k.endswith("=8"))]["run_dir"] == str(good)
    assert "ok" in result.stdout and "failed" in result.stdout  # the printed table
    # Both jobs ran at once, each in its own process.
    started = {d: (d / ".hydra" / "config.yaml").stat().st_mtime for d in (good, bad)}
    ended = {d: (d / "status.json").stat().st_mtime for d in (good, bad)}
    assert started[bad] < ended[good] and started[good] < ended[bad]
    assert "Traceback" in (bad / "__main__.log").read_text()  # the full log stays with the job
    assert "Traceback" not in result.stdout

    finished = (good / "status.json").read_text()
    mtime = (good / "status.json").stat().st_mtime
    again = sweep(*args, cwd=tmp_path, preset=["trainer.steps=300"])
    assert again.returncode == 0, again.stderr
    assert "already ok, skipped" in again.stdout
    assert (good / "status.json").read_text() == finished and (good / "status.json").stat().st_mtime == mtime


def test_rerun_resumes_an_interrupted_job_from_its_checkpoint(tmp_path):
    sweep_dir = tmp_path / "sweep"
    preset = ["trainer.steps=6000", "trainer.log_every=100", "trainer.checkpoint_every=100000",
              "trainer.sample_every=100000", "eval.every=0"]
    args = ["seed=5", f"hydra.sweep.dir={sweep_dir}"]
    job_dir = sweep_dir / "+experiment=tiny_ring,seed=5"
    sweep("--help", cwd=tmp_path, preset=preset)  # writes the preset
    process = subprocess.Popen(
        [sys.executable, "-m", "gan_experiments", "-m", "--config-dir", str(tmp_path / "my_conf"),
         "+experiment=tiny_ring", *args, "hydra/launcher=basic"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (job_dir / "status.json").exists():
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    interrupted = json.loads((job_dir / "status.json").read_text())
    assert interrupted["status"] == "interrupted" and 0 < interrupted["step"] < 6000

    result = sweep(*args, cwd=tmp_path, preset=preset)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    assert status_table(sweep_dir)[next(iter(status_table(sweep_dir)))]["status"] == "ok"
    assert json.loads((job_dir / "status.json").read_text())["step"] == 6000


def test_submitit_local_executor_runs_a_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                   "seed=0,1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {row["status"] for row in status_table(sweep_dir).values()} == {"ok"}
    assert len(status_table(sweep_dir)) == 2


def test_job_dirnames_are_one_safe_path_part():
    assert job_dirname("loss=smooth,seed=1") == "loss=smooth,seed=1"
    assert "/" not in job_dirname("data.root=/mnt/data,seed=1")
    long_a, long_b = job_dirname("x=" + "a" * 300), job_dirname("x=" + "a" * 299 + "b")
    assert len(long_a) == 150 and long_a != long_b


def test_gpu_share_packs_jobs():
    assert gpus_per_job(4) in (0.0, 0.25)  # 0 without a GPU, a quarter of one with
    with pytest.raises(ValueError):
        gpus_per_job(0)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["jobs_per_gpu=4", "cpus_per_job=2"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("RayLauncher")
    assert cfg.hydra.launcher.ray.remote.num_gpus == gpus_per_job(4)
    assert cfg.hydra.launcher.ray.remote.num_cpus == 2


@pytest.mark.parametrize("preset", ["loss_study", "ring_modes"])
def test_presets_define_the_seeds_comparison(preset):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params == {"loss": "bce,nonsat,smooth", "seed": "0,1,2"}
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


def test_optuna_preset_optimises_the_returned_objective(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep("hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                   f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    values = [float(row["value"]) for row in status_table(sweep_dir).values()]
    assert len(values) == 2 and best["best_value"] == pytest.approx(min(values))
