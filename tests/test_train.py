"""Training end to end: every model x loss, TensorBoard output, checkpoints, resume, faults."""

import io
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import read_events, tiny_cfg, train
from gan_experiments.errors import UserError
from gan_experiments.summaries import HParams
from gan_experiments.train import SCALARS

LOSSES = ["bce", "nonsat", "smooth", "hinge", "lsgan", "wgan", "wgan_gp"]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("model,data", [("dcgan", "digits"), ("mlp", "digits"), ("mlp", "ring")])
def test_each_model_and_loss_trains(tmp_path, model, data, loss):
    summary = train(tiny_cfg(f"data={data}", f"loss={loss}", model=model), tmp_path)
    assert summary["status"] == "ok" and summary["step"] == 4
    assert all(torch.isfinite(torch.tensor(summary["metrics"][k]["value"])) for k in ("final/loss_D", "final/loss_G"))
    assert json.loads((tmp_path / "status.json").read_text()) == summary
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "samples" / "step_000004.png").is_file()


def test_event_file_holds_every_tag_and_the_hparams(tmp_path):
    train(tiny_cfg("loss=smooth"), tmp_path, hparams=HParams({"seed": 0, "loss": "smooth"}, leading=("loss",)))
    events = read_events(tmp_path)
    assert set(SCALARS) <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/G")] == [2, 4]
    assert "samples" in events.Tags()["images"]
    assert [e.step for e in events.Images("samples")] == [2, 4]
    hparams = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["loss"].string_value == "smooth"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"])
    # TensorBoard shows columns marked as differing first.
    assert {h.name: h.differs for h in experiment.experiment.hparam_infos} == {"seed": False, "loss": True}
    metric_tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"final/loss_G", "final/loss_D"} <= metric_tags <= set(events.Tags()["scalars"])


def test_grids_are_big_enough_to_see_and_the_balance_charts_are_laid_out(tmp_path):
    from PIL import Image

    train(tiny_cfg(), tmp_path)  # 8 digits of 8x8 pixels: a 74 px grid before scaling
    assert Image.open(tmp_path / "samples" / "step_000004.png").width >= 512
    events = read_events(tmp_path)
    assert events.Images("samples")[-1].width >= 512
    from tensorboard.plugins.custom_scalar import layout_pb2

    config = events.Tensors("custom_scalars__config__")[0].tensor_proto
    layout = layout_pb2.Layout.FromString(config.string_val[0])
    charts = {tuple(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts == {("loss/D", "loss/G"), ("D/real", "D/fake")}


def test_point_data_logs_a_scatter_figure(tmp_path):
    train(tiny_cfg("data=ring", "loss=bce", model="mlp"), tmp_path)
    events = read_events(tmp_path)
    assert "samples" in events.Tags()["images"]  # add_figure renders into an image summary
    image = events.Images("samples")[-1]
    assert image.width > 100 and image.height > 100  # a plot, not a 2-pixel "image"


def test_fixed_noise_grid_is_the_same_all_run(tmp_path):
    train(tiny_cfg(), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    regenerated = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state["gan"]["fixed_noise"], regenerated)


RESUME = ["trainer.checkpoint_every=2", "trainer.ema_decay=0.9", "trainer.instance_noise=0.1",
          "trainer.instance_noise_steps=6", "loss=wgan_gp", "trainer.d_steps=2"]


@pytest.mark.parametrize("model,data", [("dcgan", "digits"), ("mlp", "ring")])
def test_resumed_run_equals_uninterrupted_run(tmp_path, model, data):
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    train(tiny_cfg(*RESUME, f"data={data}", "trainer.steps=6", model=model), whole)
    train(tiny_cfg(*RESUME, f"data={data}", "trainer.steps=3", model=model), halves)
    summary = train(tiny_cfg(*RESUME, f"data={data}", "trainer.steps=6", "resume=true", model=model), halves)
    assert summary["step"] == 6
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=False)["gan"]
    b = torch.load(halves / "checkpoints" / "last.pt", weights_only=False)["gan"]
    for part in ("generator", "discriminator", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"
    # The resumed run's curve continues where it stopped, without duplicate steps.
    assert [e.step for e in read_events(halves).Scalars("loss/G")] == [2, 3, 4, 6]


def test_metric_setup_does_not_change_training(tmp_path):
    """The evaluation classifier is trained on the first run and loaded from the cache on the
    next; neither may shift the training run's random numbers."""
    weights = []
    for name in ("trains_classifier", "loads_classifier", "no_classifier"):
        extra = ["eval.classifier=false"] if name == "no_classifier" else []
        train(tiny_cfg(f"eval.cache_dir={tmp_path}/cache", "eval.every=2", *extra), tmp_path / name)
        weights.append(torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=False)["gan"]["generator"])
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])


def test_resume_with_a_different_config_names_the_keys(tmp_path):
    train(tiny_cfg("trainer.steps=2"), tmp_path)
    with pytest.raises(UserError, match=r"loss.generator._target_: .*nonsaturating.* -> .*minimax.*; model.latent_dim: 8 -> 16"):
        train(tiny_cfg("model.latent_dim=16", "loss=bce", "resume=true"), tmp_path)


def test_new_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    train(tiny_cfg("trainer.steps=2"), tmp_path)
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(UserError, match="resume=true"):
        train(tiny_cfg(), tmp_path)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before


def test_missing_and_corrupt_checkpoints_on_resume(tmp_path):
    with pytest.raises(UserError, match="no checkpoint at"):
        train(tiny_cfg("resume=true"), tmp_path)
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read.*left untouched"):
        train(tiny_cfg("resume=true"), tmp_path)
    assert path.read_bytes() == b"not a checkpoint"


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_cfg("trainer.steps=8", "loss.generator._target_=conftest.NanAfter",
                   "loss.generator._partial_=false", "+loss.generator.calls=3")
    summary = train(cfg, tmp_path)
    assert summary["status"] == "diverged" and summary["step"] == 4
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "diverged"
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["gan"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["gan"]["generator"].values() if v.is_floating_point())


def test_d_steps_runs_several_discriminator_updates(tmp_path):
    train(tiny_cfg("trainer.d_steps=3", "trainer.steps=2", "optimizer=sgd"), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["gan"]
    # SGD keeps no state, so count steps through the scheduler's own counters instead.
    assert state["sched_d"]["_step_count"] == state["sched_g"]["_step_count"] == 3


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_sees_each_phase_with_bars(tmp_path, monkeypatch):
    """On a TTY: loading data, training the evaluation classifier (with its bar), training
    and evaluating; with trainer.progress=true only, and never into a log file."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(tiny_cfg("trainer.progress=true", f"eval.cache_dir={tmp_path}/cache"), tmp_path / "run")
    shown = terminal.getvalue()
    for phase in ("Loading data (digits) ...", "Training the evaluation classifier (once; cached)",
                  "Training", "Evaluating", "4/4"):
        assert phase in shown, phase
    assert "200/200" in shown  # the classifier's bar counts its steps (eval.classifier_steps)

    terminal.seek(0), terminal.truncate()
    train(tiny_cfg("trainer.progress=false"), tmp_path / "quiet")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    train(tiny_cfg("trainer.progress=true"), tmp_path / "log")
    assert terminal.getvalue() == "" and sys.stderr.getvalue() == ""


def test_the_first_signal_of_a_training_run_waits_for_the_step_a_second_stops_at_once():
    import signal

    from gan_experiments.stop import StopNow, stop_requests

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a shell's background job
    with stop_requests() as stop:
        with pytest.raises(StopNow, match="SIGINT during set-up"):
            os.kill(os.getpid(), signal.SIGINT)
        stop.setting_up = False
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.is_set()  # the loop checkpoints at the next step boundary
        with pytest.raises(StopNow, match="a second SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) == before  # restored


def test_a_job_of_a_stopped_sweep_stops_as_soon_as_it_takes_the_signals(tmp_path):
    """A stop that reached the sweep before this job held the signals is not lost."""
    from gan_experiments.stop import MARKER, StopNow, stop_requests

    (tmp_path / MARKER).touch()
    with pytest.raises(StopNow, match="a stop of its sweep"):
        with stop_requests(sweep_dir=tmp_path):
            pass
    from gan_experiments.run import run

    outcome = run(tiny_cfg(), tmp_path / "job", sweep_dir=tmp_path)
    assert outcome.kind == "not_started" and outcome.message == "the sweep was stopped"
    assert not (tmp_path / "job").exists()  # never started: a rerun starts it afresh


@pytest.mark.parametrize("name", ["SIGUSR2", "SIGHUP"])
def test_sigusr2_and_sighup_checkpoint_and_are_recorded(tmp_path, name):
    """submitit's SIGUSR2 (sent before a SLURM time limit) stops a run like SIGTERM, and the
    status says which signal it was: the SLURM launcher requeues on it. So does SIGHUP, when
    the terminal or SSH session closes: it used to kill the run at once, without a checkpoint,
    leaving status.json `running`."""
    cfg = tiny_cfg("trainer.steps=50", "trainer.checkpoint_every=100", "eval.every=0",
                   "loss.generator._target_=conftest.SignalAfter", "loss.generator._partial_=false",
                   "+loss.generator.calls=5", f"+loss.generator.signal={name}")
    summary = train(cfg, tmp_path)
    assert summary["status"] == "interrupted" and summary["stopped_by"] == name
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["gan"]
    assert saved["step"] == summary["step"] == 5  # stopped after the step the signal came in


def test_a_run_under_nohup_outlives_its_terminal(tmp_path):
    """nohup ignores SIGHUP: such a run trains on through a SIGHUP, as it did before SIGHUP
    became a stop."""
    cfg = tiny_cfg("trainer.steps=8", "eval.every=0", "loss.generator._target_=conftest.SignalAfter",
                   "loss.generator._partial_=false", "+loss.generator.calls=3", "+loss.generator.signal=SIGHUP")
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        summary = train(cfg, tmp_path)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert summary["status"] == "ok" and summary["step"] == 8


@pytest.mark.parametrize("direct", [False, True], ids=["marker_only", "and_a_direct_ctrl_c"])
def test_a_stop_of_its_sweep_reaches_a_running_job_through_the_sweep_dir(tmp_path, direct):
    """A Ray cluster runs jobs on hosts other than the sweep's driver: the line the driver adds
    to the sweep dir's marker stops a running job as its own signal would, with a checkpoint.
    A local job that the terminal's Ctrl-C also reaches directly takes the two as one stop:
    it still checkpoints, rather than stopping at once as on a second signal."""
    from gan_experiments.stop import MARKER

    # The stop comes at step 3, whose 0.7 s (longer than the watcher's 0.5 s poll) it then
    # sleeps; without it the run ends `ok` after 60 steps.
    cfg = tiny_cfg("trainer.steps=60", "trainer.checkpoint_every=100000", "eval.every=0",
                   "eval.classifier=false", "loss.generator._target_=conftest.SweepStopAt",
                   "loss.generator._partial_=false", "+loss.generator.calls=3",
                   f"+loss.generator.marker={tmp_path / MARKER}", f"+loss.generator.direct={direct}",
                   "+loss.generator.seconds=0.7")
    summary = train(cfg, tmp_path / "job", sweep_dir=tmp_path)
    assert summary["status"] == "interrupted" and summary["step"] == 3
    assert summary["stopped_by"] == ("SIGINT" if direct else "SIGTERM")
    saved = torch.load(tmp_path / "job" / "checkpoints" / "last.pt", weights_only=False)["gan"]
    assert saved["step"] == summary["step"]


def test_a_stopped_sweeps_marker_does_not_refuse_a_single_run_in_its_folder(tmp_path):
    """The resume command a stopped job prints (resume=true hydra.run.dir=<sweep>/<job>) is a
    single run: the sweep's old stop is not its own."""
    from gan_experiments.stop import MARKER

    (tmp_path / MARKER).write_text("SIGINT\n")
    assert train(tiny_cfg(), tmp_path / "job")["status"] == "ok"


def test_the_driver_gets_its_own_handlers_back_after_the_sweep():
    from gan_experiments.stop import restore_signals, stop_sweep_on_signals

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        stop_sweep_on_signals(Path("unused"))
        stop_sweep_on_signals(Path("unused"))  # the basic launcher calls it before each job
        assert signal.getsignal(signal.SIGTERM) is not mine
        restore_signals()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
