"""One start decision for a single run and a sweep's job: fresh, resume, skip or refuse, by one
table of keys that may differ; and one process per run dir."""

import gzip
import multiprocessing
import os
import signal

import pytest

from conftest import TINY, TINY_MODEL, run_cli, tiny_cfg, train, tree_snapshot
from gan_experiments.lifecycle import (
    GROWABLE,
    RESULT_NEUTRAL,
    StartRefused,
    claim,
    decide_start,
)
from gan_experiments.train import resolved

RING = ["data=ring", "model=mlp", *TINY_MODEL["mlp"]]


def ring_cfg(*overrides):
    return tiny_cfg("data=ring", *overrides, model="mlp")
# A value for each result-neutral key that differs from TINY's.
OTHER_VALUE = {
    "resume": "true", "trainer.progress": "true", "trainer.log_every": "1",
    "trainer.sample_every": "1", "trainer.checkpoint_every": "1", "trainer.device": "cpu",
    "eval.every": "1", "eval.cache_dir": "/tmp/elsewhere", "eval.inception_weights": "/tmp/w.pth",
    "data.cache_dir": "/tmp/elsewhere", "data.download": "true", "data.num_workers": "0",
    "jobs_per_gpu": "2", "cpus_per_job": "2", "logger": "csv",
}


def verdict(run_dir, *overrides, rerun=True):
    """decide_start's answer for this config: its kind, or the refusal's message. A single
    run with resume=true and a sweep run again (rerun) get the same answer."""
    cfg = ring_cfg(*overrides)
    try:
        single = decide_start(run_dir, resolved(ring_cfg("resume=true", *overrides))).kind
        sweep = decide_start(run_dir, resolved(cfg), rerun=rerun).kind
        assert single == sweep or not rerun
        return sweep
    except StartRefused as error:
        return str(error)


def test_every_key_of_the_table_continues_the_run_and_any_other_is_refused(tmp_path):
    assert set(OTHER_VALUE) == set(RESULT_NEUTRAL)
    run = tmp_path / "run"
    assert decide_start(run, resolved(ring_cfg()), rerun=True).kind == "fresh"
    assert not run.exists()
    assert train(ring_cfg(), run)["status"] == "ok"
    for key, value in OTHER_VALUE.items():
        if key.startswith("data.") and key not in resolved(ring_cfg())["data"]:
            continue  # the ring has no data cache
        assert verdict(run, f"{key}={value}") == "skip", key
    assert GROWABLE == ("trainer.steps",)
    assert verdict(run, "trainer.steps=6") == "resume"  # a finished run trained further
    assert "trainer.steps=3 is below step 4, which the run reached" in verdict(run, "trainer.steps=3")
    refused = verdict(run, "data.std=0.5", "optimizer.g.lr=0.1")
    assert "data.std: 0.01 -> 0.5" in refused and "optimizer.g.lr: 0.0002 -> 0.1" in refused
    with pytest.raises(StartRefused, match="Pass resume=true"):  # a new run would overwrite it
        decide_start(run, resolved(ring_cfg()))


def test_an_interrupted_run_resumes_and_a_changed_one_is_refused_the_same_way(tmp_path):
    """Refusing a changed config does not depend on how far the folder's run got."""
    run = tmp_path / "run"
    stop = ["loss.generator._target_=conftest.StopAfter", "loss.generator._partial_=false",
            "+loss.generator.calls=3"]
    assert train(ring_cfg("trainer.steps=8", *stop), run)["status"] == "interrupted"
    assert verdict(run, "trainer.steps=8", *stop) == "resume"
    assert "data.std" in verdict(run, "trainer.steps=8", "data.std=0.5", *stop)


def test_the_rerun_of_a_sweep_on_other_data_is_refused_and_names_data_path(tmp_path):
    """The issue's case: the same sweep on another data file reported the first file's results."""
    rows = gzip.open(_mnist_csv(), "rt").read().splitlines()
    other = tmp_path / "other.csv.gz"
    with gzip.open(other, "wt") as f:
        f.write("\n".join(rows[:300]) + "\n")
    sweep = tmp_path / "S"
    first = ["data=mnist_5k", f"data.cache_dir={tmp_path}/cache", "data.image_size=8",
             "eval.classifier=false"]
    train(tiny_cfg(*first, model="mlp"), sweep / "seed=0")
    before = tree_snapshot(sweep)
    cfg = tiny_cfg(*first, f"data.path={other}", model="mlp")
    with pytest.raises(StartRefused, match=r"data\.path: None -> .*other\.csv\.gz"):
        with claim(sweep / "seed=0"):
            decide_start(sweep / "seed=0", resolved(cfg), rerun=True)
    assert tree_snapshot(sweep) == before


@pytest.mark.slow
def test_the_cli_sweep_rerun_on_other_data_is_refused(tmp_path):
    rows = gzip.open(_mnist_csv(), "rt").read().splitlines()
    other = tmp_path / "other.csv.gz"
    with gzip.open(other, "wt") as f:
        f.write("\n".join(rows[:300]) + "\n")
    sweep = [
        "-m", "hydra/launcher=basic", "model=mlp", *TINY_MODEL["mlp"], "trainer.steps=5",
        "eval.every=0", "eval.classifier=false", "seed=0,1", f"hydra.sweep.dir={tmp_path}/S",
        f"data.cache_dir={tmp_path}/cache", "trainer.progress=false",
    ]
    first = run_cli(*sweep, cwd=tmp_path)
    assert first.returncode == 0 and first.stdout.count(": started") == 2, first.stderr
    again = run_cli(*sweep, f"data.path={other}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("start refused") == 2 and "data.path: None ->" in again.stdout
    assert "skipped" not in again.stdout


def _hold(run_dir, ready):
    with claim(run_dir):
        ready.set()
        signal.pause()


def test_one_process_per_run_dir_and_no_stale_lock_after_kill_9(tmp_path):
    run = tmp_path / "run"
    ready = multiprocessing.get_context("fork").Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold, args=(run, ready))
    holder.start()
    try:
        assert ready.wait(30)
        before = tree_snapshot(run)
        with pytest.raises(StartRefused, match="Another process is using"):
            train(ring_cfg(), run)
        assert tree_snapshot(run) == before  # nothing was written by the refused start
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    assert train(ring_cfg(), run)["status"] == "ok"  # the dead holder's lock is gone


@pytest.mark.slow
def test_a_second_cli_start_into_a_busy_run_dir_is_refused(tmp_path):
    import subprocess
    import sys
    import time

    args = [*TINY[1:], *RING, "trainer.steps=100000", "trainer.checkpoint_every=100000",
            f"hydra.run.dir={tmp_path}/run"]
    first = subprocess.Popen([sys.executable, "-m", "gan_experiments", *args], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "status.json").exists():
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.2)
        second = run_cli(*args, "resume=true", cwd=tmp_path)
        assert second.returncode == 1 and "Another process is using" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.communicate()


def test_a_refused_start_into_a_new_folder_leaves_no_folder(tmp_path):
    with pytest.raises(StartRefused, match="trainer.steps must be at least 1"):
        train(ring_cfg("trainer.steps=0"), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def _mnist_csv():
    from gan_experiments.data import MNIST_5K, _packaged_file

    return _packaged_file(*MNIST_5K)


@pytest.mark.parametrize("damage", ["bare_state_dict", "no_rng"])
def test_a_checkpoint_in_another_layout_is_refused_and_the_status_kept(tmp_path, damage):
    """Resume and the sampler name what the checkpoint lacks; a finished run stays ok."""
    import torch

    from gan_experiments import sample

    run = tmp_path / "run"
    train(ring_cfg(), run)
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    if damage == "bare_state_dict":
        state = state["gan"]["generator"]
    else:
        del state["rng"]
    torch.save(state, path)
    before = tree_snapshot(run)
    with pytest.raises(StartRefused, match="not in this version's layout: it lacks .*rng"):
        train(ring_cfg("resume=true", "trainer.steps=6"), run)
    assert tree_snapshot(run) == before  # status.json still says ok
    with pytest.raises(SystemExit, match="not in this version's layout"):
        sample.main([str(run), "--npz", str(tmp_path / "x.npz")])


def test_a_finished_run_without_its_checkpoint_is_refused_not_retrained(tmp_path):
    run = tmp_path / "run"
    train(ring_cfg(), run)
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(StartRefused, match="whose checkpoint .* is missing"):
        decide_start(run, resolved(ring_cfg()), rerun=True)
