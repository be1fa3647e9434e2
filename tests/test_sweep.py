"""Sweeps through the real launchers: Ray on a local instance, submitit's local executor."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import CONF, TINY, TINY_MODEL, read_events, write_loss_option
from gan_experiments.errors import UserError
from gan_experiments.placement import gpu_share, spread
from gan_experiments.sweep import job_dirname


def sweep(*args, cwd, preset=(), timeout=300, env=None):
    """A sweep of tiny ring jobs; the tiny settings come from a preset in a user config dir,
    as a researcher would keep them, so job folders are named by the swept values alone."""
    preset_file = cwd / "my_conf" / "experiment" / "tiny_ring.yaml"
    preset_file.parent.mkdir(parents=True, exist_ok=True)
    preset_file.write_text(_nest([*TINY, *TINY_MODEL["mlp"], *preset]))
    return subprocess.run(
        [sys.executable, "-m", "gan_experiments", "-m", "--config-dir", str(cwd / "my_conf"),
         "+experiment=tiny_ring", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _nest(settings):
    tree = {}
    for override in settings:
        if override.startswith("data="):  # the preset's own defaults choose the data
            continue
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


# Jobs long enough to overlap, without drawing a scatter plot every other step.
LONGER = ["trainer.steps=300", "trainer.sample_every=100", "trainer.checkpoint_every=100", "eval.every=0"]


@pytest.mark.slow
def test_parallel_sweep_isolates_a_failure_and_skips_finished_jobs_when_rerun(tmp_path):
    sweep_dir = tmp_path / "sweep"
    write_loss_option(tmp_path / "my_conf", "crash", "RaiseAfter")  # fails at its second step
    args = ["loss=nonsat,crash", f"hydra.sweep.dir={sweep_dir}"]
    # A `ray start` whose head has died leaves its address record behind; a local sweep must
    # start its own Ray rather than try to join that dead cluster.
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(ray_tmp),
           "PYTHONPATH": str(Path(__file__).parent)}
    try:
        result = sweep(*args, cwd=tmp_path, preset=LONGER, env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    # Folders are named by what varies; the constant preset stays in multirun.yaml.
    good, bad = sweep_dir / "loss=nonsat", sweep_dir / "loss=crash"
    table = status_table(sweep_dir)
    assert {k.split()[-1]: row["status"] for k, row in table.items()} == {
        "loss=nonsat": "ok", "loss=crash": "failed"}
    assert table[next(k for k in table if k.endswith("=nonsat"))]["run_dir"] == str(good)
    assert "ok" in result.stdout and "failed" in result.stdout  # the printed table
    # (That jobs run at once is checked by test_jobs_are_pinned_to_logical_gpus_and_packed_per_gpu:
    # the failing job here ends too fast to overlap reliably.)
    assert "Traceback" in (bad / "__main__.log").read_text()  # the full log stays with the job
    assert "Traceback" not in result.stdout
    # The HPARAMS table leads with what was varied and the config group choices.
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        read_events(good).PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    leading = [h.name for h in experiment.hparam_infos if h.differs]
    assert leading[0] == "loss" and {"data", "model", "loss"} <= set(leading)
    assert "cpus_per_job" not in leading and len(leading) < 15

    finished = (good / "status.json").read_text()
    mtime = (good / "status.json").stat().st_mtime
    again = sweep(*args, "hydra/launcher=basic", cwd=tmp_path, preset=LONGER, env=env)  # skipping needs no Ray
    assert again.returncode == 0, again.stderr
    assert "already ok, skipped" in again.stdout
    assert (good / "status.json").read_text() == finished and (good / "status.json").stat().st_mtime == mtime


@pytest.mark.slow
def test_rerun_resumes_an_interrupted_job_from_its_checkpoint(tmp_path):
    sweep_dir = tmp_path / "sweep"
    preset = ["trainer.steps=1000", "trainer.log_every=100", "trainer.checkpoint_every=100000",
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
    assert interrupted["status"] == "interrupted" and 0 < interrupted["step"] < 1000

    result = sweep(*args, "hydra/launcher=basic", cwd=tmp_path, preset=preset)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    assert status_table(sweep_dir)[next(iter(status_table(sweep_dir)))]["status"] == "ok"
    assert json.loads((job_dir / "status.json").read_text())["step"] == 1000


@pytest.mark.slow
def test_submitit_local_executor_runs_a_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                   "seed=0,1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {row["status"] for row in status_table(sweep_dir).values()} == {"ok"}
    assert len(status_table(sweep_dir)) == 2
    assert sorted(d.name for d in sweep_dir.iterdir() if d.is_dir()) == [".submitit", "seed=0", "seed=1"]


def test_job_dirnames_name_what_varies_in_one_safe_path_part(tmp_path):
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "overrides": {"task": ["+experiment=x", "loss=bce,smooth", "data.root=/mnt/d", "x=range(2)"]},
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"seed": "0,1", "model.pack": "2"}}}}))
    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    job = ["+experiment=x", "loss=smooth", "data.root=/mnt/d", "x=1", "seed=1", "model.pack=2"]
    assert job_dirname(job, str(tmp_path), basic, 3) == "loss=smooth,seed=1,x=1"
    none = str(tmp_path / "none")  # no multirun.yaml: every override names the job
    # less the result-neutral keys (lifecycle.RESULT_NEUTRAL) and paths
    assert job_dirname(["b=2", "+a=1", "resume=true", "trainer.log_every=5", "cpus_per_job=2"],
                       none, basic, 0) == "+a=1,b=2"
    assert job_dirname(["data.root=/mnt/data", "seed=3"], none, basic, 0) == "seed=3"
    long_a = job_dirname(["x=" + "a" * 300], none, basic, 0)
    long_b = job_dirname(["x=" + "a" * 299 + "b"], none, basic, 0)
    assert len(long_a) == 150 and long_a != long_b
    # 79 CJK characters of a swept data path are 237 bytes: the cut counts bytes, as file
    # systems do (a 107-character name of 267 bytes was refused by the file system)
    (tmp_path / "cjk").mkdir()
    (tmp_path / "cjk" / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "overrides": {"task": ["data.path='/a','/数据/" + "数" * 79 + "'"]}, "sweeper": {"_target_": basic}}},
        allow_unicode=True))
    cjk = job_dirname(["data.path=/数据/" + "数" * 79, "seed=0"], str(tmp_path / "cjk"), basic, 0)
    assert len(cjk.encode()) <= 150 and cjk.startswith("data.path=")
    (tmp_path / "globbed").mkdir()  # glob() and interval() sweeps cannot be listed: they vary
    (tmp_path / "globbed" / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "overrides": {"task": ["loss=glob(*)"]}, "sweeper": {"_target_": basic}}}))
    assert job_dirname(["loss=bce", "seed=0"], str(tmp_path / "globbed"), basic, 0) == "loss=bce"
    optuna = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert job_dirname(["optimizer.g.lr=0.001"], str(tmp_path), optuna, 7) == "trial=7"


def test_the_gpu_share_follows_the_cluster_and_the_device():
    assert gpu_share(8, "auto", 4) == 0.25 and gpu_share(8, "cuda", 1) == 1.0
    assert gpu_share(0, "auto", 4) == 0.0  # a cluster without GPUs
    assert gpu_share(8, "cpu", 4) == 0.0  # trainer.device=cpu reserves no GPU
    with pytest.raises(UserError, match="jobs_per_gpu=0"):
        gpu_share(8, "auto", 0)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["jobs_per_gpu=4", "cpus_per_job=2"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("ParallelLauncher")
    assert "num_gpus" not in cfg.hydra.launcher.ray.remote  # decided from the cluster it joins
    assert cfg.hydra.launcher.ray.remote.num_cpus == 2


def test_fractional_shares_are_spread_one_gpu_per_bundle_within_the_free_cpus():
    nine = spread(9, 0.25, gpus_free=8, cpus_free=16, cpus_per_job=1)
    assert len(nine.bundles) == 8 and nine.at_once == 2 and nine.bundles[0] == {"GPU": 1.0, "CPU": 2}
    assert nine.job_bundle == [0, 1, 2, 3, 4, 5, 6, 7, 0]
    many = spread(40, 0.25, gpus_free=8, cpus_free=64, cpus_per_job=1)
    assert len(many.bundles) == 8 and many.at_once == 4  # four at once on every GPU
    short = spread(40, 0.25, gpus_free=8, cpus_free=8, cpus_per_job=1)
    assert len(short.bundles) == 8 and short.at_once == 1  # CPUs bound how many run at once
    assert spread(40, 0.25, gpus_free=8, cpus_free=4, cpus_per_job=1).at_once == 1
    assert len(spread(40, 0.25, gpus_free=8, cpus_free=4, cpus_per_job=1).bundles) == 4
    assert spread(9, 1.0, 8, 16, 1) is None  # whole GPUs: Ray's own placement spreads them
    assert spread(9, 0.0, 8, 16, 1) is None and spread(1, 0.25, 8, 16, 1) is None
    assert spread(9, 0.25, gpus_free=1, cpus_free=16, cpus_per_job=1) is None


@pytest.mark.parametrize("preset", ["loss_study", "ring_modes"])
def test_presets_define_the_seeds_comparison(preset):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params == {"loss": "bce,nonsat,smooth", "seed": "0,1,2"}
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


@pytest.mark.slow
def test_optuna_study_survives_failing_and_diverging_trials(tmp_path):
    """A search space with a region refused at the start (pack 3 does not divide batch 8) and
    one that diverges: every trial runs, those are recorded as failed trials (Optuna gets no
    value), the best finished one reported."""
    sweep_dir = tmp_path / "sweep"
    write_loss_option(tmp_path / "my_conf", "nan_after", "NanAfter")
    (tmp_path / "my_conf" / "hparams_search").mkdir()
    (tmp_path / "my_conf" / "hparams_search" / "risky.yaml").write_text(
        "# @package _global_\ndefaults: [optuna]\n"
        "hydra: {sweeper: {n_trials: 8, n_jobs: 4, params: {loss: 'choice(nonsat, nan_after)', "
        "model.pack: 'choice(1, 3)'}}}\n")
    result = sweep("hparams_search=risky", "hydra/launcher=basic", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert result.returncode == 0, result.stderr
    rows = status_table(sweep_dir)
    assert sorted(d.name for d in sweep_dir.glob("trial=*")) == sorted(f"trial={i}" for i in range(8))
    refused = [d for d in sweep_dir.glob("trial=*") if not (d / "status.json").exists()]
    assert refused and len(rows) + len(refused) == 8
    assert result.stdout.count("start refused: model.pack=3 must be a positive divisor") == len(refused)
    assert {r["status"] for r in rows.values()} == {"ok", "diverged"}
    study = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    finished = [float(r["value"]) for r in rows.values() if r["status"] == "ok"]
    assert study["best_value"] == pytest.approx(min(finished))
    assert all(r["value"] == "" for r in rows.values() if r["status"] != "ok")  # strict CSV


@pytest.mark.slow
def test_optuna_maximises_a_metric_where_higher_is_better(tmp_path):
    """eval.objective=modes: the study's best trial is the one with the most modes."""
    sweep_dir = tmp_path / "sweep"
    result = sweep("hparams_search=optuna", "hydra/launcher=basic", "eval.objective=modes",
                   "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "trainer.steps=200",
                   "data.std=0.2", "trainer.sample_every=200", "trainer.checkpoint_every=200", "eval.every=0",
                   f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    modes = [float(r["value"]) for r in status_table(sweep_dir).values() if r["status"] == "ok"]
    assert len(modes) == 4 and len(set(modes)) > 1, modes  # else min and max agree
    assert study["best_value"] == max(modes)


@pytest.mark.slow
def test_a_refused_job_is_no_job_of_the_table(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep("hydra/launcher=basic", "trainer.steps=0,4", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "start refused: trainer.steps must be at least 1" in result.stdout
    assert list(status_table(sweep_dir)) == ["+experiment=tiny_ring trainer.steps=4"]
    assert not (sweep_dir / "trainer.steps=0" / "status.json").exists()
    assert "Not started (start refused, or the sweep was stopped" in result.stdout and "trainer.steps=0" in result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ray_head(tmp_path, *resources):
    """`ray start --head` with `resources` (e.g. --num-gpus=8: Ray's LOGICAL GPUs on this CPU),
    as on a cluster's head node; yields (port, env) for a sweep that joins it by
    address=auto. The cluster keeps to itself: its own temp dir (where `ray start` records the
    address that `auto` finds) and its own process group, stopped by signalling that group.
    `ray stop` would kill every Ray cluster on the machine, such as a user's running sweep, and
    a record left in /tmp/ray would send the user's next sweep to this dead cluster. The short
    path keeps Ray's socket paths under the Unix limit."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    head_log = tmp_path / "ray_head.log"
    with open(head_log, "w") as log:
        head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                                 f"--port={port}", *resources, "--include-dashboard=false",
                                 "--disable-usage-stats"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
                                start_new_session=True)
    try:
        # Up once it has recorded its address, the record `auto` reads.
        address_record = Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 120
        while not address_record.exists():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail("`ray start --head` did not come up:\n" + head_log.read_text())
            time.sleep(0.5)
        yield port, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


@pytest.mark.slow
def test_sweep_joins_an_existing_ray_cluster(tmp_path):
    with ray_head(tmp_path, "--num-cpus=2") as (port, env):
        sweep_dir = tmp_path / "sweep"
        # `auto`, as on a cluster node: the address `ray start` recorded on this machine.
        result = sweep("seed=0,1", "hydra.launcher.ray.init.address=auto",
                       f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert f":{port}" in result.stdout + result.stderr  # joined this cluster, not another
        assert [r["status"] for r in status_table(sweep_dir).values()] == ["ok", "ok"]


def _raylet_of(ray_tmpdir: str) -> int:
    """The pid of the raylet of the cluster whose temp dir is `ray_tmpdir` (its socket paths
    are under it), found in /proc: this test's cluster's, never another one's."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if proc.name.isdigit() and cmdline[0].endswith("raylet") and any(ray_tmpdir in a for a in cmdline):
            return int(proc.name)
    raise AssertionError(f"no raylet under {ray_tmpdir}")


@pytest.mark.slow
def test_a_sweep_whose_ray_node_dies_stops_with_its_table(tmp_path):
    """The raylet killed under a running sweep, as the OOM killer does: the driver used to wait
    forever, print no table, and leave its jobs `running`. It must notice within seconds,
    record the jobs `stopped` at their last checkpoint, print the table, say how to resume,
    and exit non-zero."""
    with ray_head(tmp_path, "--num-cpus=2") as (_, env):
        sweep_dir = tmp_path / "sweep"
        preset = tmp_path / "my_conf" / "experiment" / "tiny_ring.yaml"
        preset.parent.mkdir(parents=True)
        preset.write_text(_nest([*TINY, *TINY_MODEL["mlp"], "trainer.steps=100000", "trainer.checkpoint_every=20",
                                 "trainer.sample_every=100000", "trainer.log_every=100", "eval.every=0"]))
        driver = subprocess.Popen(
            [sys.executable, "-m", "gan_experiments", "-m", "--config-dir", str(tmp_path / "my_conf"),
             "+experiment=tiny_ring", "seed=0,1", "hydra.launcher.ray.init.address=auto",
             f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 180
            while len(list(sweep_dir.glob("*/checkpoints/last.pt"))) < 2:
                assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read()
                time.sleep(0.5)
            os.kill(_raylet_of(env["RAY_TMPDIR"]), signal.SIGKILL)
            killed = time.monotonic()
            output, _ = driver.communicate(timeout=120)
            noticed_s = time.monotonic() - killed
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.communicate()
    assert driver.returncode != 0, output
    assert noticed_s < 30, noticed_s
    records = status_table(sweep_dir)
    assert [r["status"] for r in records.values()] == ["stopped", "stopped"], output
    for job in sweep_dir.glob("seed=*"):
        saved = torch.load(job / "checkpoints" / "last.pt", weights_only=False)
        assert json.loads((job / "status.json").read_text())["step"] == saved["gan"]["step"]
    assert "stopped answering" in output and "run the same command again" in output
    assert "Traceback" not in output


# Jobs long enough to overlap, short enough for nine at once on two cores.
OVERLAPPING = ["trainer.steps=150", "trainer.sample_every=1000", "trainer.log_every=50",
               "trainer.checkpoint_every=1000", "eval.every=0"]


def jobs_by_gpu(sweep_dir) -> dict[str | None, list[tuple[datetime, datetime]]]:
    """Each job's (start, end), by the CUDA_VISIBLE_DEVICES that Ray gave it."""
    by_gpu = {}
    for path in sweep_dir.glob("*/status.json"):
        job = json.loads(path.read_text())
        assert job["status"] == "ok", job
        by_gpu.setdefault(job["cuda_visible_devices"], []).append(
            (datetime.fromisoformat(job["started"]), datetime.fromisoformat(job["ended"])))
    return by_gpu


@pytest.mark.slow
def test_a_cpu_only_driver_asks_the_clusters_gpus_and_spreads_shares_over_all_of_them(tmp_path):
    """Ray's LOGICAL GPUs: a head node with 8 of them (and 16 logical CPUs, so that CPUs do not
    limit the placement), joined by this driver, whose torch sees no GPU. The GPU share used to
    be decided by the driver's torch.cuda.is_available(): every job asked for 0 GPUs and got
    none (cuda_visible_devices null). Forced to a quarter, Ray packed 9 jobs on GPUs 0-2 and
    left five idle. And trainer.device=cpu must ask for no GPU at all."""
    with ray_head(tmp_path, "--num-gpus=8", "--num-cpus=16") as (_, env):
        spread_dir = tmp_path / "spread"
        result = sweep("seed=range(9)", "jobs_per_gpu=4", "hydra.launcher.ray.init.address=auto",
                       f"hydra.sweep.dir={spread_dir}", cwd=tmp_path, env=env, preset=OVERLAPPING)
        assert result.returncode == 0, result.stderr
        by_gpu = jobs_by_gpu(spread_dir)
        assert sorted(by_gpu) == [str(i) for i in range(8)], by_gpu
        assert sorted(len(spans) for spans in by_gpu.values()) == [1] * 7 + [2]

        cpu_dir = tmp_path / "cpu"
        result = sweep("seed=0,1", "jobs_per_gpu=4", "trainer.device=cpu", "hydra.launcher.ray.init.address=auto",
                       f"hydra.sweep.dir={cpu_dir}", cwd=tmp_path, env=env, preset=OVERLAPPING)
        assert result.returncode == 0, result.stderr
        assert list(jobs_by_gpu(cpu_dir)) == [None]


@pytest.mark.slow
def test_jobs_are_pinned_to_logical_gpus_and_packed_per_gpu(tmp_path):
    """Ray's LOGICAL GPUs: a local Ray with two on this CPU machine. Six jobs at jobs_per_gpu=2
    (half a GPU each) must use both GPU ids, and run at most two on one at a time."""
    sweep_dir = tmp_path / "sweep"
    result = sweep("seed=range(6)", "jobs_per_gpu=2", "+hydra.launcher.ray.init.num_gpus=2",
                   "+hydra.launcher.ray.init.num_cpus=8", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
                   preset=OVERLAPPING)
    assert result.returncode == 0, result.stderr
    by_gpu = jobs_by_gpu(sweep_dir)
    assert sorted(by_gpu) == ["0", "1"] and sum(map(len, by_gpu.values())) == 6
    for spans in by_gpu.values():
        for start, _ in spans:  # jobs running on this GPU when this one started
            assert sum(s <= start < e for s, e in spans) <= 2
    assert max(sum(s <= start < e for s, e in spans) for spans in by_gpu.values() for start, _ in spans) == 2


@pytest.mark.slow
def test_one_ctrl_c_ends_a_sequential_sweep_with_its_table(tmp_path):
    """hydra/launcher=basic: one SIGINT checkpoints the running job, starts no other, prints
    the table and how to resume; the same command then resumes it."""
    sweep_dir = tmp_path / "sweep"
    args = ["hydra/launcher=basic", "seed=0,1,2", "trainer.steps=100000",
            "trainer.checkpoint_every=100000", "trainer.sample_every=50", "eval.every=0",
            f"hydra.sweep.dir={sweep_dir}"]
    preset_file = tmp_path / "my_conf" / "experiment" / "tiny_ring.yaml"
    preset_file.parent.mkdir(parents=True)
    preset_file.write_text(_nest([*TINY, *TINY_MODEL["mlp"]]))
    process = subprocess.Popen(
        [sys.executable, "-m", "gan_experiments", "-m", "--config-dir", str(tmp_path / "my_conf"),
         "+experiment=tiny_ring", *args], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(sweep_dir.glob("seed=0/samples/step_*.png")):
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0 and "Traceback" not in err, err
    rows = status_table(sweep_dir)
    assert [r["status"] for r in rows.values()] == ["interrupted"]
    assert "seed=1: not started: the sweep was stopped" in out and "seed=2: not started" in out
    assert "Run the same command again to resume it" in out
    assert (sweep_dir / "seed=0" / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("send", [
    lambda pid: os.killpg(pid, signal.SIGINT),  # Ctrl-C in the terminal: the whole process group
    lambda pid: os.kill(pid, signal.SIGTERM),  # a SIGTERM to the driver alone
], ids=["ctrl_c", "sigterm_to_the_driver"])
def test_one_ctrl_c_ends_a_ray_sweep_with_checkpoints_and_its_table(tmp_path, send):
    """The default launcher: Ctrl-C in the terminal (SIGINT to the driver's process group)
    used to kill Ray and its jobs mid-step, leaving them `running` with no checkpoint, and a
    SIGTERM to the driver aborted it (rc 134) with its jobs left `running`."""
    sweep_dir = tmp_path / "sweep"
    preset_file = tmp_path / "my_conf" / "experiment" / "tiny_ring.yaml"
    preset_file.parent.mkdir(parents=True)
    preset_file.write_text(_nest([*TINY, *TINY_MODEL["mlp"]]))
    process = subprocess.Popen(
        [sys.executable, "-m", "gan_experiments", "-m", "--config-dir", str(tmp_path / "my_conf"),
         "+experiment=tiny_ring", "seed=0,1", "trainer.steps=1000000", "eval.every=0",
         "trainer.checkpoint_every=1000000", "trainer.sample_every=50", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group, as a terminal gives it
    try:
        deadline = time.time() + 180
        # Both jobs training (on a loaded machine one job's two grids may come before the other starts).
        while len({p.parts[-3] for p in sweep_dir.glob("seed=*/samples/step_*.png")}) < 2:
            assert time.time() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.5)
        send(process.pid)
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0 and "Traceback" not in err, err
    rows = status_table(sweep_dir)
    assert [r["status"] for r in rows.values()] == ["interrupted", "interrupted"]
    for row in rows.values():
        state = torch.load(Path(row["run_dir"]) / "checkpoints" / "last.pt", weights_only=False)
        assert state["gan"]["step"] == int(row["step"]) > 0
    assert "Run the same command again to resume it" in out


def test_the_slurm_launcher_asks_for_a_gpu_only_when_the_run_may_use_one():
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    for device, gpus in (("auto", 1), ("cuda", 1), ("cpu", 0)):
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=["hydra/launcher=slurm", f"trainer.device={device}"],
                          return_hydra_config=True)
        assert cfg.hydra.launcher.gpus_per_node == gpus
        assert cfg.hydra.launcher._target_.startswith("hydra_plugins.")  # Hydra takes it from there


def test_a_refused_submission_is_one_paragraph_with_its_fix():
    from gan_experiments.slurm import refusal

    said = refusal("sbatch: error: Invalid generic resource (gres) specification\n")
    assert said == ("SLURM refused the sweep's jobs, so nothing was submitted: sbatch: error: "
                    "Invalid generic resource (gres) specification. To fix it, the partition has "
                    "no GPUs: add trainer.device=cpu (the launcher then asks for no GPU) or "
                    "hydra.launcher.gpus_per_node=0.")
    # select/cons_res takes no --gpus-per-node: a "gres" refusal there is the request's form.
    cons_res = refusal("sbatch: error: Invalid generic resource (gres) specification\n", "select/cons_res")
    assert "hydra.launcher.gpus_per_node=null hydra.launcher.gres=gpu:1" in cons_res
    assert "has no GPUs" not in cons_res
    assert "hydra.launcher.partition=<name>" in refusal("sbatch: error: invalid partition specified: gpu")
    assert "sinfo -s" in refusal("sbatch: error: something new")


@pytest.mark.slow
def test_jobs_per_gpu_on_slurm_is_refused_before_anything_is_submitted(tmp_path):
    """SLURM gives jobs whole GPUs: jobs_per_gpu=4 used to be ignored there, silently."""
    sweep_dir = tmp_path / "sweep"
    result = sweep("hydra/launcher=slurm", "jobs_per_gpu=4", "seed=0,1", f"hydra.sweep.dir={sweep_dir}",
                   cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "jobs_per_gpu=4, but SLURM gives each job whole GPUs" in result.stderr
    assert not list(sweep_dir.glob("*/status.json")) and not (sweep_dir / ".submitit").exists()


@pytest.mark.slow
def test_with_hydra_job_chdir_a_job_still_finds_its_sweeps_stop_and_swept_keys(tmp_path):
    """hydra.job.chdir=true runs each job in its own folder: a relative sweep dir made each job
    look for the stop marker and multirun.yaml there, so it trained on to `ok` after a stop and
    lost seed's leading place in the HPARAMS tab."""
    sweep_dir = tmp_path / "sweep"
    stop_at = ["loss.generator._target_=conftest.SweepStopAt", "loss.generator._partial_=false",
               "+loss.generator.calls=3", f"+loss.generator.marker={sweep_dir}/.stopped",
               "+loss.generator.direct=false", "+loss.generator.seconds=0.6"]
    result = sweep("hydra/launcher=basic", "hydra.job.chdir=true", "seed=0,1", "hydra.sweep.dir=sweep",
                   *stop_at, "trainer.steps=60", "trainer.checkpoint_every=1000", "eval.every=0", cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert result.returncode == 0, result.stderr
    table = status_table(sweep_dir)
    assert [row["status"] for row in table.values()] == ["interrupted"], table
    assert "seed=1: not started: the sweep was stopped" in result.stdout
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        read_events(sweep_dir / "seed=0").PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    assert [h.name for h in experiment.hparam_infos if h.differs][0] == "seed"
