"""Where a run's numbers go: TensorBoard events in its folder (always: the report and TensorBoard
read them), and where a lab already keeps its runs: a CSV file, MLflow, Weights & Biases.

Every logger gets the same content: the resolved config (swept keys first) with each metric's
direction (the registry's), every scalar with its step, and the sample grids. A resumed run
continues the same logged run, with each metric's steps strictly increasing:
- TensorBoard purges the events after the checkpoint's step (its `purge_step`), and the CSV
  file drops its rows after it; both are redone by the resumed run.
- MLflow and W&B cannot delete a point, so they are sent only what a checkpoint covers (at each
  checkpoint, and at the end), and a resumed run sends only the steps they do not hold yet.
  Their run ids and how far they hold the run are kept in the run folder (`RunPaths.logged_runs`).

A logger other than TensorBoard that fails mid-run (a server gone, a full disk) warns once and
is dropped; training, its TensorBoard events and its checkpoints go on. One that cannot start
refuses the start (`start_loggers`)."""

import csv
import io
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from gan_experiments.checkpoint import atomic_write
from gan_experiments.errors import UserError
from gan_experiments.metrics.registry import direction
from gan_experiments.paths import RunPaths
from gan_experiments.summaries import HParams, hparam_value, log_hparams, log_layout

log = logging.getLogger(__name__)

# A run's close status, as MLflow names it.
MLFLOW_STATUS = {"ok": "FINISHED", "interrupted": "KILLED", "diverged": "FAILED", "failed": "FAILED"}


@dataclass(frozen=True)
class LoggedRun:
    """What every logger is told about the run it logs.

    name: the run folder's name (a sweep's job is named as its folder, e.g. `loss=bce,seed=0`).
    sweep: the sweep it belongs to, which is one MLflow experiment and one W&B group (its
    folder, relative to the working directory where it is inside it); None for a single run.
    resumed_at: the checkpoint's step a resumed run continues from; None for a fresh start."""

    run_dir: Path
    name: str
    sweep: str | None = None
    resumed_at: int | None = None


class Logger:
    """One destination. Steps arrive in increasing order; `flush` is called as each
    checkpoint is written, `close` once, with the run's status (ok, interrupted, diverged, or
    failed)."""

    essential = False  # a failure of an essential logger stops the run like any other error

    def config(self, params: HParams, metric_tags: list[str]) -> None: ...

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def image(self, tag: str, grid: torch.Tensor, png: Path, step: int) -> None:
        """`grid`: (3, H, W), uint8 or float in [0, 1]; `png`: the same picture, already saved."""

    def flush(self) -> None: ...

    def close(self, status: str) -> None: ...


class TensorBoardLogger(Logger):
    """The run folder's own events: scalars, sample grids, HPARAMS and the custom layout."""

    essential = True

    def __init__(self, run: LoggedRun):
        # Events after the checkpoint's step were written by the lost part of the run, and all
        # of a leg that ended before its first checkpoint (the run starts over): redone now.
        purge = run.resumed_at + 1 if run.resumed_at is not None else 0
        self.writer = SummaryWriter(str(run.run_dir), purge_step=purge)

    def config(self, params, metric_tags):
        log_hparams(self.writer, params, metric_tags)
        log_layout(self.writer)

    def scalars(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag, grid, png, step):
        self.writer.add_image(tag, grid, step)

    def flush(self):
        self.writer.flush()

    def close(self, status):
        self.writer.close()


class CSVLogger(Logger):
    """One tidy file per run, `RunPaths.csv`: a row (step, tag, value) per scalar. The config is
    beside it in `.hydra/config.yaml`, the grids in `samples/`."""

    COLUMNS = ("step", "tag", "value")

    def __init__(self, run: LoggedRun):
        self.path = RunPaths(run.run_dir).csv
        resuming = run.resumed_at is not None and self.path.exists()
        if resuming:
            self._truncate(run.resumed_at)
        # A fresh start redoes the steps of a leg that ended before its first checkpoint.
        self.file = open(self.path, "a" if resuming else "w", newline="")
        self.writer = csv.writer(self.file)
        if not resuming:
            self.writer.writerow(self.COLUMNS)

    def _truncate(self, step: int) -> None:
        """Drop the rows after `step`, as TensorBoard purges its events, and a row a kill cut short."""
        lines = self.path.read_text().splitlines(keepends=True)[1:]
        whole = [line for line in lines if line.endswith("\n")]  # a kill can cut the last one short
        kept = io.StringIO()
        csv.writer(kept).writerows([self.COLUMNS, *(row for row in csv.reader(whole) if int(row[0]) <= step)])
        atomic_write(self.path, lambda f: f.write(kept.getvalue().encode()))

    def scalars(self, values, step):
        self.writer.writerows((step, tag, repr(float(value))) for tag, value in values.items())

    def flush(self):
        self.file.flush()

    def close(self, status):
        self.file.close()


@dataclass
class _Pending:
    """What a remote logger has been given since its last flush: scalars and images by step."""

    scalars: dict = field(default_factory=dict)  # step -> {tag: value}
    images: dict = field(default_factory=dict)  # step -> {tag: png}


class RemoteLogger(Logger):
    """A logger that cannot delete what it was sent (MLflow, W&B): it is sent what a checkpoint
    covers, at each flush, and a resumed run skips the steps it already holds. `where` names the
    store (a tracking URI, a W&B project): a resume that logs elsewhere starts a new run there."""

    key = ""  # its entry in RunPaths.logged_runs

    def __init__(self, run: LoggedRun, where: str):
        self.run, self.where = run, where
        held = read_logged_runs(run.run_dir).get(self.key, {})
        self.held = held if run.resumed_at is not None and held.get("where") == where else {}
        if run.resumed_at is not None and not self.held:
            log.warning("The %s logger starts a new run at step %d in %s: it holds only the steps after it.",
                        self.key, run.resumed_at, where)
        # The steps it holds from the run's earlier legs: the resumed run has them again, equal
        # (a resume is bit-exact on the same arithmetic).
        self.held_through = self.held.get("through_step", -1)
        self.run_id = self.held.get("run_id")  # None: the subclass starts a new run and remembers it
        self.pending = _Pending()

    def scalars(self, values, step):
        if step > self.held_through:
            self.pending.scalars.setdefault(step, {}).update(values)

    def image(self, tag, grid, png, step):
        if step > self.held_through:
            self.pending.images.setdefault(step, {})[tag] = png

    def flush(self):
        pending, self.pending = self.pending, _Pending()
        steps = sorted(pending.scalars.keys() | pending.images.keys())
        if steps:
            self.send(pending, steps)
            self.remember(through_step=self.stored_through(steps[-1]))

    def send(self, pending: _Pending, steps: list[int]) -> None:
        raise NotImplementedError

    def stored_through(self, last_sent: int) -> int:
        """The last step the store keeps for sure once `last_sent` was sent."""
        return last_sent

    def remember(self, **facts) -> None:
        """Keep the run id, its store and how far it holds the run in the run folder."""
        self.held = {**self.held, "run_id": self.run_id, "where": self.where, **facts}
        runs = {**read_logged_runs(self.run.run_dir), self.key: self.held}
        atomic_write(RunPaths(self.run.run_dir).logged_runs,
                     lambda f: f.write(json.dumps(runs, indent=1).encode()))


def read_logged_runs(run_dir: Path) -> dict:
    path = RunPaths(run_dir).logged_runs
    return json.loads(path.read_text()) if path.exists() else {}


def require(module: str, extra: str):
    """Import an optional package, or refuse the start naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"logger={extra} needs the {module} package, which is not installed. Install it with "
                        f'pip install -e ".[{extra}]", or choose another logger (e.g. logger=tensorboard).') from None


class MLflowLogger(RemoteLogger):
    """An MLflow run: params (the flattened config), metrics with their steps, the grids as
    artifacts under their tag, a `direction.<tag>` tag per metric. A sweep is one experiment
    (named as its folder), its jobs runs named as theirs; a single run goes to `experiment_name`.

    tracking_uri: any MLflow store; by default `sqlite:///<outputs>/mlflow.db`, whose artifacts
    go to `mlartifacts/` beside the database."""

    key = "mlflow"

    def __init__(self, run: LoggedRun, tracking_uri: str, experiment_name: str | None = None):
        super().__init__(run, tracking_uri)
        require("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        # MLflow retries a request 7 times over minutes by default: a server that is gone would
        # hold a start that long before refusing it, and a run at each checkpoint.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        name = experiment_name or run.sweep or "gan_experiments"
        with store_lock(tracking_uri):  # a sweep's jobs start at once: one creates the SQLite store
            self.client = MlflowClient(tracking_uri)
            experiment_id = get_or_create_experiment(self.client, name, artifact_location(tracking_uri))
        if self.run_id is None:
            self.run_id = self.client.create_run(experiment_id, run_name=run.name, tags={
                "run_dir": str(Path(run.run_dir).resolve()), **({"sweep": run.sweep} if run.sweep else {})}).info.run_id
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        self.remember(through_step=self.held_through)

    def config(self, params, metric_tags):
        from mlflow.entities import Param, RunTag

        # A resumed run keeps the params it was started with (MLflow cannot change one), and
        # a start that changes a result's config is refused before this.
        logged = self.client.get_run(self.run_id).data.params
        new = [Param(k[:250], str(hparam_value(v))[:6000]) for k, v in params.values.items() if k[:250] not in logged]
        tags = [RunTag(f"direction.{tag}", direction(tag)) for tag in metric_tags]
        for i in range(0, max(len(new), len(tags)), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(self.run_id, params=new[i:i + 100], tags=tags[i:i + 100])

    def send(self, pending, steps):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, float(value), now, step)
                   for step in steps for tag, value in pending.scalars.get(step, {}).items()]
        for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        for step in steps:
            for tag, png in pending.images.get(step, {}).items():
                self.client.log_artifact(self.run_id, str(png), artifact_path=tag)

    def close(self, status):
        if status != "failed":  # a failed run's unsent steps are redone when it resumes
            self.flush()
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])


def get_or_create_experiment(client, name: str, artifacts: str | None) -> str:
    """The id of experiment `name`; a sweep's jobs on a server may all try to create it at once."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def store_lock(tracking_uri: str):
    """A lock beside a SQLite store while it is created (alembic's migrations are not safe to
    run twice at once); no lock for other stores."""
    from contextlib import nullcontext

    from filelock import FileLock

    if not tracking_uri.startswith("sqlite:///"):
        return nullcontext()
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock")


def artifact_location(tracking_uri: str) -> str | None:
    """`mlartifacts/` beside a SQLite store (MLflow's default would be ./mlruns of whatever
    folder the job runs in); the store's own default otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


class WandbLogger(RemoteLogger):
    """A W&B run, offline by default: its files go to `<run dir>/wandb/`, and `wandb sync`
    uploads them later. Config (flattened, swept keys first), scalars at their steps, grids as
    images; each metric is defined with its direction (summary: min or max, and the last value).
    A sweep is one group, its jobs named as their folders. An offline W&B run cannot resume:
    each leg of a resumed run is a folder of its own under the same run id, which
    `wandb sync --append` adds to the run in order."""

    key = "wandb"

    def __init__(self, run: LoggedRun, project: str, mode: str = "offline", entity: str | None = None,
                 group: str | None = None):
        super().__init__(run, f"{entity or '(default entity)'}/{project}")
        wandb = require("wandb", "wandb")
        self.run_id = self.run_id or uuid.uuid4().hex[:8]
        mode = str(getattr(mode, "value", mode))
        self.wandb, self.sent_through = wandb, -1
        self.run_obj = wandb.init(
            dir=str(run.run_dir), project=project, entity=entity, group=group or run.sweep, name=run.name,
            id=self.run_id, mode=mode, resume="allow" if mode == "online" else None, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True))
        self.remember(through_step=self.held_through)

    def config(self, params, metric_tags):
        self.run_obj.config.update({k: hparam_value(v) for k, v in params.values.items()}, allow_val_change=True)
        for tag in metric_tags:
            self.run_obj.define_metric(tag, summary=f"{'max' if direction(tag) == 'maximize' else 'min'},last")

    def send(self, pending, steps):
        for step in steps:
            row = dict(pending.scalars.get(step, {}))
            row.update({tag: self.wandb.Image(str(png)) for tag, png in pending.images.get(step, {}).items()})
            self.run_obj.log(row, step=step)
        self.sent_through = steps[-1]

    def stored_through(self, last_sent):
        # W&B commits a step's row when a later step comes, or at finish: a kill before loses it.
        return last_sent - 1

    def close(self, status):
        if status != "failed":
            self.flush()
        self.run_obj.finish(exit_code=0 if status == "ok" else 1)
        if self.sent_through > self.held_through:
            self.remember(through_step=self.sent_through)


class Loggers:
    """The run's loggers, called together. A failure of a logger that is not essential warns once
    and drops it."""

    def __init__(self, loggers: list[Logger]):
        self.active = list(loggers)
        self.closed = False

    def _each(self, method: str, *args) -> None:
        for logger in list(self.active):
            if logger.essential:
                getattr(logger, method)(*args)
                continue
            try:
                getattr(logger, method)(*args)
            except Exception as error:  # a remote store can fail in any way; training goes on
                self.active.remove(logger)
                log.warning("The %s logger failed (%s: %s) and is dropped for the rest of this run; training, "
                            "its TensorBoard events and its checkpoints go on.", type(logger).__name__,
                            type(error).__name__, error)
                if method != "close":
                    try:  # end its run (MLflow: FAILED; W&B: finished), so that it is not left running
                        logger.close("failed")
                    except Exception:
                        pass

    def config(self, params: HParams, metric_tags: list[str]) -> None:
        self._each("config", params, metric_tags)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self._each("scalars", values, step)

    def image(self, tag: str, grid: torch.Tensor, png: Path, step: int) -> None:
        self._each("image", tag, grid, png, step)

    def flush(self) -> None:
        self._each("flush")

    def close(self, status: str) -> None:
        """Once; later calls do nothing (the loop's end closes them, and a crash's cleanup)."""
        if not self.closed:
            self.closed = True
            self._each("close", status)  # a failing close drops only its own logger


def start_loggers(nodes: DictConfig, run: LoggedRun) -> Loggers:
    """The loggers of conf/logger, started. One that cannot start (not installed, an
    unreachable store, a refused login) raises UserError naming it. The remote ones start
    first; on a refusal (or a signal) those started are closed and what they created in the run
    folder is removed, so that a refused start leaves the folder as it was."""
    order = ["mlflow", "wandb", "csv", "tensorboard"]
    names = sorted((name for name, node in nodes.items() if node is not None), key=order.index)
    before = set(run.run_dir.iterdir()) if run.run_dir.exists() else set()
    started = []
    try:
        for name in names:
            try:
                started.append(instantiate(nodes[name], run=run))
            except InstantiationException as error:
                cause = error.__cause__ or error
                if isinstance(cause, UserError):
                    raise cause from None
                raise UserError(f"The {name} logger could not start ({type(cause).__name__}: {cause}). Fix "
                                f"logger.{name} (e.g. its tracking_uri or project), or choose another logger "
                                f"(e.g. logger=tensorboard).") from None
    except BaseException:
        Loggers(started).close("failed")
        for path in set(run.run_dir.iterdir()) - before if run.run_dir.exists() else ():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise
    return Loggers(started)


def job_group(sweep_dir: Path | None) -> str | None:
    """A sweep's name for the loggers: its folder, relative to the working directory where it is
    inside it."""
    if sweep_dir is None:
        return None
    sweep_dir = Path(sweep_dir).resolve()
    try:
        return str(sweep_dir.relative_to(Path(os.getcwd()).resolve()))
    except ValueError:
        return str(sweep_dir)
