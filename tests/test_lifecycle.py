"""A run's bookkeeping: refused starts write nothing, every status and metric says what
happened and when, checkpoints reload anywhere and resume exactly, files reach the disk."""

import contextlib
import json
import os

import pytest
import torch

from conftest import TINY, TINY_MODEL, read_events, run_cli, tiny_cfg, train, tree_snapshot
from gan_experiments import checkpoint
from gan_experiments.lifecycle import StartRefused
from gan_experiments.record import RunRecord
from gan_experiments.state import TrainingState
from gan_experiments.train import build, build_gan, make_losses, maybe_compile, train_step

RING = ["data=ring", "model=mlp", *TINY_MODEL["mlp"]]


def strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}: not strict JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_a_refused_start_leaves_a_finished_run_byte_identical(tmp_path):
    run = tmp_path / "X"
    first = run_cli(*TINY, *RING, "trainer.steps=20", f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = tree_snapshot(run)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "status.json",
            "checkpoints/last.pt"} <= before.keys()
    assert "metrics.json" not in before  # status.json is the one results file
    # The same command again, and one with other overrides: both refused, nothing touched.
    for extra in ([], ["loss=bce", "seed=3"]):
        again = run_cli(*TINY, *RING, "trainer.steps=20", *extra, f"hydra.run.dir={run}", cwd=tmp_path)
        assert again.returncode == 1 and "already holds a run (ok at step 20)" in again.stderr
        assert "Nothing was written" in again.stderr
        assert tree_snapshot(run) == before
    assert strict_json(run / "status.json")["status"] == "ok"


def test_resume_with_another_config_is_refused_without_writing(tmp_path):
    train(tiny_cfg("trainer.steps=2"), tmp_path)
    before = tree_snapshot(tmp_path)
    with pytest.raises(StartRefused, match="model.latent_dim: 8 -> 16"):
        train(tiny_cfg("model.latent_dim=16", "resume=true"), tmp_path)
    assert tree_snapshot(tmp_path) == before


def test_checkpoint_loads_onto_any_device_with_rng_states_on_the_cpu(tmp_path):
    train(tiny_cfg("trainer.steps=2"), tmp_path)
    # `meta` stands in for a GPU: whatever the training device, torch.set_rng_state only
    # accepts CPU ByteTensors.
    state = TrainingState.load(tmp_path / "checkpoints" / "last.pt", torch.device("meta"))
    assert state.rng["torch"].device.type == "cpu" and state.rng["torch"].dtype == torch.uint8
    assert all(v.device.type == "meta" for v in state.gan["generator"].values())
    assert state.gan["fixed_noise"].device.type == "meta"
    checkpoint.set_rng_state(state.rng, torch.device("meta"))


def test_an_interrupted_run_reports_its_metrics_with_their_steps_and_no_value(tmp_path):
    cfg = tiny_cfg(*RING[:2], "trainer.steps=8", "eval.every=2", "trainer.checkpoint_every=100",
                   "loss.generator._target_=conftest.StopAfter", "loss.generator._partial_=false",
                   "+loss.generator.calls=5", model="mlp")
    summary = train(cfg, tmp_path)
    assert summary["status"] == "interrupted" and summary["step"] == 5
    assert summary["value"] is None  # never a stale metric stamped as the result
    assert summary["metrics"]["metrics/reverse_kl"]["step"] == 4
    assert "final/loss_D" not in summary["metrics"]
    saved = strict_json(tmp_path / "status.json")
    assert saved == summary and saved["metrics"]["metrics/hq"]["step"] == 4


def test_a_run_resumed_at_its_last_step_finishes_with_its_final_evaluation(tmp_path):
    cfg = ["trainer.checkpoint_every=100", "eval.every=0", "loss.generator._partial_=false",
           "loss.generator._target_=conftest.StopAfter", "+loss.generator.calls=4"]
    interrupted = train(tiny_cfg(*RING[:2], "trainer.steps=8", *cfg, model="mlp"), tmp_path)
    assert interrupted["status"] == "interrupted" and interrupted["metrics"] == {}
    # Its checkpoint is at step 4; asking for 4 steps leaves nothing to train, only to finish.
    done = train(tiny_cfg(*RING[:2], "trainer.steps=4", "resume=true", *cfg, model="mlp"), tmp_path)
    assert done["status"] == "ok" and done["step"] == 4
    # The status tells the resumed leg from the whole run.
    assert done["first_started"] == interrupted["started"] < done["started"]
    assert done["resumed_from_step"] == 4 and "resumed_from_step" not in interrupted
    assert {k: v for k, v in done["metrics"]["metrics/reverse_kl"].items() if k != "method"} == \
        {"value": done["value"], "step": 4}
    assert done["metrics"]["final/loss_G"]["step"] == 4
    assert [e.step for e in read_events(tmp_path).Scalars("metrics/reverse_kl")] == [4]


def test_a_diverged_run_is_strict_json_with_null_value(tmp_path):
    cfg = tiny_cfg("trainer.steps=8", "loss.generator._target_=conftest.NanAfter",
                   "loss.generator._partial_=false", "+loss.generator.calls=3")
    summary = train(cfg, tmp_path)
    assert summary["status"] == "diverged" and summary["value"] is None
    assert strict_json(tmp_path / "status.json")["value"] is None


def test_a_crash_after_the_start_is_recorded_as_failed(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("out of memory in the middle of a step")

    monkeypatch.setattr("gan_experiments.train.train_step", crash)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(tiny_cfg(), tmp_path)
    status = strict_json(tmp_path / "status.json")
    assert status["status"] == "failed" and status["value"] is None
    assert status["error"] == "RuntimeError: out of memory in the middle of a step"


def test_a_bad_model_is_a_refused_start(tmp_path):
    with pytest.raises(StartRefused, match="model.latent_dim must be at least 1, got -1"):
        train(tiny_cfg("model.latent_dim=-1"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_fp16_resume_continues_with_the_saved_loss_scales(tmp_path, precision):
    common = [*RING[:2], f"trainer.precision={precision}", "loss=wgan_gp", "trainer.checkpoint_every=3"]
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    train(tiny_cfg(*common, "trainer.steps=6", model="mlp"), whole)
    train(tiny_cfg(*common, "trainer.steps=3", model="mlp"), halves)
    train(tiny_cfg(*common, "trainer.steps=6", "resume=true", model="mlp"), halves)
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(halves / "checkpoints" / "last.pt", weights_only=False)
    assert a["scalers"] == b["scalers"]  # scale and growth tracker carried across the resume
    if precision == "fp16":  # a fresh scaler after the resume would have counted only 3 steps
        assert a["scalers"][0]["scale"] > 0 and a["scalers"][0]["_growth_tracker"] > 3
    for key, value in a["gan"]["generator"].items():
        assert torch.equal(value, b["gan"]["generator"][key]), key


def test_raising_steps_on_resume_keeps_the_instance_noise_horizon(tmp_path):
    noise = ["trainer.instance_noise=0.4", "trainer.log_every=1", "trainer.checkpoint_every=4"]
    train(tiny_cfg(*noise, "trainer.steps=4"), tmp_path)
    train(tiny_cfg(*noise, "trainer.steps=8", "resume=true"), tmp_path)
    logged = {e.step: e.value for e in read_events(tmp_path).Scalars("instance_noise/std")}
    # Annealed to 0 at step 4, the horizon of the original 4 steps, not stretched to 8.
    assert max(logged) <= 4 and logged[1] == pytest.approx(0.4)
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert saved["noise_horizon"] == 4


def test_writes_reach_the_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("replace", None)) or real_replace(a, b))
    RunRecord("ok", 2, 2).write(tmp_path)
    assert calls == [("fsync", False), ("replace", None), ("fsync", True)]
    calls.clear()
    checkpoint.save(tmp_path / "last.pt", {"x": torch.ones(3)})
    assert calls == [("fsync", False), ("replace", None), ("fsync", True)]
    assert torch.equal(torch.load(tmp_path / "last.pt")["x"], torch.ones(3))


def test_the_penalty_interpolates_towards_the_fakes_d_saw(tmp_path):
    cfg = tiny_cfg(*RING[:2], "loss=wgan_gp", "trainer.instance_noise=0.5", model="mlp")
    data = build(cfg.data, device="cpu")
    gan = build_gan(cfg, data, torch.device("cpu"))
    seen = []
    gan.discriminator.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    scalers = (torch.amp.GradScaler("cpu", enabled=False),) * 2
    train_step(gan, data, make_losses(cfg), cfg.trainer, 0.5, scalers, contextlib.nullcontext, False)
    real, fake, mixed = seen[:3]
    # Each interpolate lies on the segment from its real sample to the very fake D judged.
    t = ((mixed - real) * (fake - real)).sum(1) / (fake - real).pow(2).sum(1)
    assert torch.allclose(real + t[:, None] * (fake - real), mixed, atol=1e-5)
    assert ((t >= 0) & (t <= 1)).all()


def test_a_non_finite_penalty_counts_as_divergence():
    cfg = tiny_cfg(*RING[:2], "loss=wgan_gp", model="mlp")
    data = build(cfg.data, device="cpu")
    gan = build_gan(cfg, data, torch.device("cpu"))
    losses = make_losses(cfg)
    losses.penalty = lambda *args, **kwargs: torch.tensor(float("nan"))
    scalers = (torch.amp.GradScaler("cpu", enabled=False),) * 2
    stats, finite = train_step(gan, data, losses, cfg.trainer, 0.0, scalers, contextlib.nullcontext, False)
    assert torch.isfinite(stats["loss/D"]) and not finite


def test_the_compile_probe_draws_nothing_from_the_runs_rng():
    cfg = tiny_cfg(*RING[:2], "trainer.compile=true", "trainer.compile_backend=eager", model="mlp")
    data = build(cfg.data, device="cpu")
    gan = build_gan(cfg, data, torch.device("cpu"))
    before = torch.get_rng_state()
    maybe_compile(gan, make_losses(cfg), contextlib.nullcontext, cfg, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, as a full disk to write results onto (needs root, as on CI)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_full_disk_ends_in_one_paragraph_with_a_loadable_checkpoint(tmp_path, small_disk):
    run = small_disk / "run"
    result = run_cli(
        "data=digits", "data.image_size=16", "model=mlp", "model.g_hidden=[128]",
        "model.d_hidden=[128]", f"eval.cache_dir={tmp_path}/cache", "eval.classifier=false",
        "trainer.steps=200", "trainer.checkpoint_every=5", "trainer.sample_every=5",
        "trainer.progress=false", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Could not write" in result.stderr and "MB free on its disk" in result.stderr
    kept = int(result.stderr.split("at step ")[1].split(".")[0])
    assert f"resume=true hydra.run.dir={run}" in result.stderr
    state = TrainingState.load(run / "checkpoints" / "last.pt")  # the last good one still loads
    assert state.step == kept > 0
    assert not list(run.rglob("*.tmp*"))  # no half-written temporary file


def test_a_resume_on_another_thread_count_says_it_is_no_longer_bit_exact(tmp_path, caplog):
    """The thread count and device are recorded with the run; a resume on another thread count
    continues (cpus_per_job is result-neutral) but says, in the log and in status.json, that it
    is no longer bit-exact: it used to end at another value silently."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train(tiny_cfg("trainer.steps=2"), tmp_path)
        assert json.loads((tmp_path / "status.json").read_text())["arithmetic"]["threads"] == 1
        torch.set_num_threads(2)
        summary = train(tiny_cfg("trainer.steps=4", "resume=true"), tmp_path)
        again = train(tiny_cfg("trainer.steps=6", "resume=true"), tmp_path)  # on 2 threads again
    finally:
        torch.set_num_threads(threads)
    assert summary["status"] == "ok"
    assert summary["resumed_on_other_arithmetic"] == ["threads: 1 -> 2"]
    assert "no longer bit-exact" in caplog.text
    assert again["resumed_on_other_arithmetic"] == ["threads: 1 -> 2"]  # once not bit-exact, never again
