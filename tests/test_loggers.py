"""The logger group: every logger is read back with its own library (MLflow's client, W&B's
offline-run reader, the csv module) and holds what the run's TensorBoard events hold."""

import csv
import json
import logging
import math
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_cfg, train
from gan_experiments.lifecycle import StartRefused
from gan_experiments.loggers import job_group
from gan_experiments.paths import RunPaths
from gan_experiments.record import RunRecord
from gan_experiments.summaries import run_hparams

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")
from mlflow.tracking import MlflowClient  # noqa: E402

# wandb's reader of its own .wandb files (removed from the package in 0.30; pinned in .[dev]).
datastore = pytest.importorskip("wandb.sdk.internal.datastore")
from wandb.proto import wandb_internal_pb2  # noqa: E402

MNIST_LIKE = ["trainer.steps=8", "trainer.checkpoint_every=4", "eval.every=4"]


def many(store, *overrides):
    return tiny_cfg("logger=many", f"logger.mlflow.tracking_uri=sqlite:///{store}/mlflow.db", *MNIST_LIKE,
                    *overrides)


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tensorboard_images(run_dir) -> dict[str, list[int]]:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    return {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}


def csv_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    with open(RunPaths(run_dir).csv, newline="") as f:
        rows = list(csv.DictReader(f))
    series = {}
    for row in rows:
        series.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return series


def mlflow_run(store, run_dir):
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    run_id = json.loads(RunPaths(run_dir).logged_runs.read_text())["mlflow"]["run_id"]
    return client, client.get_run(run_id)


def mlflow_scalars(client, run) -> dict[str, list[tuple[int, float]]]:
    return {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics}


def wandb_records(run_dir) -> list:
    """Every record of the run's offline W&B runs (one per leg of a resumed run), in order."""
    records = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        store = datastore.DataStore()
        store.open_for_scan(str(path))
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            records.append(record)
    return records


def wandb_history(records) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[int]]]:
    """Scalars and images by key, with their steps, from the history records."""
    scalars, images = {}, {}
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:  # an image's fields come as (key, field) pairs
            key, *field = item.nested_key or [item.key]
            value = json.loads(item.value_json)
            row[key] = {**row.get(key, {}), field[0]: value} if field else value
        step = row["_step"]
        for key, value in row.items():
            if key.startswith("_"):
                continue
            if isinstance(value, dict) and value.get("_type") == "image-file":
                images.setdefault(key, []).append(step)
            else:
                scalars.setdefault(key, []).append((step, value))
    return scalars, images


def same_series(ours, theirs, what):
    assert set(ours) == set(theirs), (what, set(ours) ^ set(theirs))
    for tag in ours:
        assert [s for s, _ in ours[tag]] == [s for s, _ in theirs[tag]], (what, tag)
        for (_, a), (_, b) in zip(ours[tag], theirs[tag], strict=True):
            assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7), (what, tag, a, b)  # TensorBoard keeps float32


def strictly_increasing(series, what):
    for tag, points in series.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), (what, tag, steps)


def test_a_many_logger_sweep_of_two_jobs_holds_the_same_numbers_everywhere(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        cfg = many(tmp_path, f"seed={seed}")
        hparams = run_hparams(cfg, {"loss": "nonsat", "logger": "many"}, swept={"seed"})  # as the runner's
        assert train(cfg, sweep / f"seed={seed}", hparams, sweep_dir=sweep)["status"] == "ok"

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(job_group(sweep))  # one experiment per sweep
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"seed=0", "seed=1"}  # named as their folders
    for seed in (0, 1):
        run_dir = sweep / f"seed={seed}"
        board = tensorboard_scalars(run_dir)
        assert "metrics/fid_classifier" in board and "final/loss_G" in board

        same_series(board, csv_scalars(run_dir), "csv")

        mlflow_client, run = mlflow_run(tmp_path, run_dir)
        assert run.info.status == "FINISHED" and run.info.run_name == f"seed={seed}"
        same_series(board, mlflow_scalars(mlflow_client, run), "mlflow")
        assert run.data.params["seed"] == str(seed) and run.data.params["loss"] == "nonsat"
        assert run.data.tags["direction.metrics/fid_classifier"] == "minimize"
        assert run.data.tags["direction.metrics/precision_classifier"] == "maximize"
        artifacts = [a.path for a in mlflow_client.list_artifacts(run.info.run_id, "samples")]
        assert artifacts == [f"samples/{p.name}" for p in sorted((run_dir / "samples").glob("*.png"))]

        records = wandb_records(run_dir)
        scalars, images = wandb_history(records)
        same_series(board, scalars, "wandb")
        assert images == tensorboard_images(run_dir)  # the grids, at their steps
        (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert started.display_name == f"seed={seed}" and started.run_group == job_group(sweep)
        config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
                  for item in r.config.update if not item.key.startswith("_")}
        assert config["seed"] == seed and list(config)[0] == "seed"  # swept keys first
        goals = {r.metric.name: r.metric.summary for r in records if r.WhichOneof("record_type") == "metric"}
        assert goals["metrics/fid_classifier"].min and goals["metrics/fid_classifier"].last
        assert goals["metrics/precision_classifier"].max


def test_a_resume_from_an_older_checkpoint_continues_each_logged_run_without_doubling_back(tmp_path):
    run_dir = tmp_path / "run"
    assert train(many(tmp_path, "trainer.steps=4"), run_dir)["status"] == "ok"
    older = (run_dir / "older.pt")
    older.write_bytes(RunPaths(run_dir).checkpoint.read_bytes())  # step 4
    assert train(many(tmp_path, "resume=true"), run_dir)["status"] == "ok"  # trained on to step 8
    # The last checkpoint lost: the run resumes from step 4, but every logger holds it to step 8.
    older.replace(RunPaths(run_dir).checkpoint)
    record = RunRecord.read(run_dir)
    record.status = "interrupted"
    record.write(run_dir)
    mlflow_run_id = json.loads(RunPaths(run_dir).logged_runs.read_text())["mlflow"]["run_id"]
    assert train(many(tmp_path, "resume=true"), run_dir)["status"] == "ok"

    board = tensorboard_scalars(run_dir)
    strictly_increasing(board, "tensorboard")
    assert [s for s, _ in board["loss/D"]] == [2, 4, 6, 8]
    for name, series in [("csv", csv_scalars(run_dir)), ("wandb", wandb_history(wandb_records(run_dir))[0])]:
        strictly_increasing(series, name)
        same_series(board, series, name)  # a resume is bit-exact here: the values held are the values redone
    client, run = mlflow_run(tmp_path, run_dir)
    assert run.info.run_id == mlflow_run_id  # the same MLflow run all along
    strictly_increasing(mlflow_scalars(client, run), "mlflow")
    same_series(board, mlflow_scalars(client, run), "mlflow")
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 3  # one per leg, one run id
    assert len({r.run.run_id for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "run"}) == 1


def test_a_logger_that_fails_mid_run_warns_once_and_training_goes_on(tmp_path, caplog):
    # MLflow's artifacts go below a file: the first grid it is sent fails, after the start.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    store = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(store).create_experiment("blocked", artifact_location=(blocker / "artifacts").as_uri())
    run_dir = tmp_path / "run"
    cfg = tiny_cfg("logger=mlflow", f"logger.mlflow.tracking_uri={store}", "logger.mlflow.experiment_name=blocked",
                   *MNIST_LIKE)
    with caplog.at_level(logging.WARNING, logger="gan_experiments.loggers"):
        assert train(cfg, run_dir)["status"] == "ok"
    failures = [r.getMessage() for r in caplog.records if "logger failed" in r.getMessage()]
    assert len(failures) == 1 and "MLflowLogger" in failures[0]
    board = tensorboard_scalars(run_dir)
    assert [s for s, _ in board["loss/D"]] == [2, 4, 6, 8] and "final/loss_G" in board
    assert RunPaths(run_dir).checkpoint.exists()
    client, run = mlflow_run(tmp_path, run_dir)
    assert run.info.status == "FAILED"  # the dropped logger's run was ended, not left running
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/D")] == [2, 4]  # before it failed


def test_a_run_started_over_after_a_crash_before_its_first_checkpoint_logs_each_step_once(tmp_path):
    run_dir = tmp_path / "run"
    crash = ["loss.generator._target_=conftest.RaiseAfter", "loss.generator._partial_=false",
             "+loss.generator.calls=4"]
    with pytest.raises(RuntimeError, match="a crash in the middle"):
        train(many(tmp_path, *crash), run_dir)  # crashes at step 4, before its first checkpoint
    assert not RunPaths(run_dir).checkpoint.exists()
    assert train(many(tmp_path, "resume=true"), run_dir)["status"] == "ok"  # starts over
    board = tensorboard_scalars(run_dir)
    for name, series in [("csv", csv_scalars(run_dir)), ("wandb", wandb_history(wandb_records(run_dir))[0])]:
        strictly_increasing(series, name)
    same_series(board, csv_scalars(run_dir), "csv")


def test_a_logger_that_is_not_installed_refuses_the_start_naming_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed: its import fails
    run_dir = tmp_path / "run"
    with pytest.raises(StartRefused, match=r'pip install -e "\.\[wandb\]"'):
        train(tiny_cfg("logger=wandb"), run_dir)
    assert not run_dir.exists()


def test_a_store_that_cannot_be_reached_refuses_the_start(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run_dir = tmp_path / "run"
    with pytest.raises(StartRefused, match="The mlflow logger could not start .* Fix logger.mlflow"):
        train(tiny_cfg("logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9"), run_dir)
    assert not run_dir.exists()


def test_a_misspelt_logger_key_fails_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        tiny_cfg("logger=mlflow", "logger.mlflow.trackin_uri=sqlite:///x.db")


@pytest.mark.slow
def test_a_parallel_sweep_s_jobs_start_together_on_one_mlflow_store(tmp_path):
    """Two Ray jobs create the default SQLite store at once (its lock serialises the creation)."""
    from conftest import TINY, TINY_MODEL, run_cli

    result = run_cli("-m", "logger=many", "seed=0,1", *TINY, *TINY_MODEL["dcgan"], *MNIST_LIKE,
                     "hydra.sweep.dir=outputs/sweeps/s", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 jobs: 2 ok" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")  # the default store, under outputs/
    experiment = client.get_experiment_by_name("outputs/sweeps/s")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["seed=0", "seed=1"]
    for run in runs:
        assert run.info.status == "FINISHED"
        same_series(tensorboard_scalars(tmp_path / "outputs/sweeps/s" / run.info.run_name),
                    mlflow_scalars(client, run), "mlflow")
    assert not (tmp_path / "mlruns").exists()  # artifacts beside the store, not in the working directory
