"""Each stabiliser changes what it should, and every loss x stabiliser pair trains."""

import contextlib
import math

import pytest
import torch
from hydra.utils import instantiate

from conftest import read_events, tiny_cfg, train
from gan_experiments.errors import UserError
from gan_experiments.train import (
    build,
    build_gan,
    instance_noise_std,
    make_losses,
    train_step,
)

STABILISERS = {
    "instance_noise": ["trainer.instance_noise=0.5"],
    "wgan_gp": ["loss/penalty=wgan_gp"],
    "r1": ["loss/penalty=r1", "loss.penalty.weight=1.0"],
    "spectral_norm": ["model.spectral_norm=true"],
    "ema": ["trainer.ema_decay=0.9"],
    "pack": ["model.pack=2"],
    "linear_lr": ["schedule=linear"],
    "cosine_lr": ["schedule=cosine"],
    "d_steps": ["trainer.d_steps=3"],
    "all_at_once": ["trainer.instance_noise=0.5", "loss/penalty=r1", "model.spectral_norm=true",
                    "trainer.ema_decay=0.9", "model.pack=2", "schedule=cosine", "trainer.d_steps=2"],
}


@pytest.mark.parametrize("loss", ["bce", "nonsat", "smooth", "hinge", "lsgan", "wgan", "wgan_gp"])
@pytest.mark.parametrize("stabiliser", sorted(STABILISERS))
def test_every_loss_and_stabiliser_trains_finitely(tmp_path, loss, stabiliser):
    summary = train(tiny_cfg(f"loss={loss}", *STABILISERS[stabiliser]), tmp_path)
    assert summary["status"] == "ok"
    assert math.isfinite(summary["metrics"]["final/loss_D"]["value"]) and math.isfinite(summary["metrics"]["final/loss_G"]["value"])


def setup(*overrides, model="mlp"):
    torch.manual_seed(0)
    cfg = tiny_cfg("data=ring", *overrides, model=model)
    data = build(cfg.data, device="cpu")
    return cfg, data, build_gan(cfg, data, torch.device("cpu")), make_losses(cfg)


def step(cfg, data, gan, losses, noise_std=0.0):
    scalers = (torch.amp.GradScaler("cpu", enabled=False),) * 2
    stats, _ = train_step(gan, data, losses, cfg.trainer, noise_std, scalers, contextlib.nullcontext, True)
    return stats


def test_instance_noise_schedule():
    assert instance_noise_std(0, 0.4, 100) == pytest.approx(0.4)
    assert instance_noise_std(25, 0.4, 100) == pytest.approx(0.3)
    assert instance_noise_std(100, 0.4, 100) == 0.0
    assert instance_noise_std(150, 0.4, 100) == 0.0
    assert instance_noise_std(10, 0.0, 100) == 0.0


def test_instance_noise_reaches_the_discriminator():
    cfg, data, gan, losses = setup()
    seen = []
    gan.discriminator.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    step(cfg, data, gan, losses, noise_std=1.0)
    real_seen = seen[0]  # the first D call of a D step is on real data
    distance_to_ring = (real_seen.norm(dim=1) - 1).abs()
    assert distance_to_ring.mean() > 0.3  # ring data alone lies within 0.05 of the circle


def test_ema_generator_matches_hand_computation():
    cfg, data, gan, losses = setup("trainer.ema_decay=0.8")
    snapshots = []
    for _ in range(3):
        step(cfg, data, gan, losses)
        snapshots.append({k: v.clone() for k, v in gan.generator.state_dict().items()})
    ema = gan.ema.module.state_dict()
    for key, first in snapshots[0].items():
        expected = first  # the first update copies the weights
        for later in snapshots[1:]:
            expected = 0.8 * expected + 0.2 * later[key]
        assert torch.allclose(ema[key], expected, atol=1e-6), key


def test_ema_samples_are_logged_and_checkpointed(tmp_path):
    train(tiny_cfg("trainer.ema_decay=0.9"), tmp_path)
    assert "samples_ema" in read_events(tmp_path).Tags()["images"]
    assert (tmp_path / "samples_ema" / "step_000004.png").is_file()
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["gan"]
    assert state["ema"] is not None and "n_averaged" in state["ema"]


@pytest.mark.parametrize("penalty", ["wgan_gp", "r1"])
def test_penalty_is_computed_on_discriminator_steps_only(penalty):
    cfg, data, gan, losses = setup(f"loss/penalty={penalty}", "trainer.d_steps=3")
    calls = []
    gan.discriminator.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    stats = step(cfg, data, gan, losses)
    # Each D step calls D on real, fake and the penalty's own batch (interpolates for WGAN-GP,
    # the real batch again for R1); the G step calls it once.
    assert len(calls) == 3 * 3 + 1
    assert stats["loss/penalty"] > 0


def test_no_penalty_unless_one_is_chosen():
    assert make_losses(tiny_cfg("loss=wgan_gp", "loss/penalty=none")).penalty is None
    assert make_losses(tiny_cfg("loss=nonsat")).penalty is None
    assert make_losses(tiny_cfg("loss=wgan_gp", "loss.penalty.weight=0")).penalty is None  # not computed
    with pytest.raises(UserError, match=r"loss.penalty.weight=1.0, but no gradient penalty is chosen .* loss/penalty=r1"):
        make_losses(tiny_cfg("loss=nonsat", "loss.penalty.weight=1"))
    cfg, data, gan, losses = setup("loss=nonsat")
    assert "loss/penalty" not in step(cfg, data, gan, losses)  # nothing computed, nothing logged


@pytest.mark.parametrize("schedule,expected", [
    ("constant", lambda t: 1.0),
    ("linear", lambda t: 1 - t / 10),
    ("cosine", lambda t: (1 + math.cos(math.pi * t / 10)) / 2),
])
def test_learning_rate_schedules(schedule, expected):
    cfg = tiny_cfg(f"schedule={schedule}", "trainer.steps=10")
    for net in ("g", "d"):
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = instantiate(cfg.schedule[net])(optimizer)
        for t in range(11):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * expected(t), abs=1e-9), t
            optimizer.step()
            scheduler.step()


def test_logged_learning_rate_follows_the_schedule(tmp_path):
    train(tiny_cfg("schedule=linear", "trainer.steps=4", "trainer.log_every=1"), tmp_path)
    logged = [(e.step, e.value) for e in read_events(tmp_path).Scalars("lr/G")]
    assert logged == [(t, pytest.approx(2e-4 * (1 - t / 4), abs=1e-10)) for t in (1, 2, 3, 4)]


def test_ttur_gives_g_and_d_their_own_learning_rates(tmp_path):
    train(tiny_cfg("optimizer.d.lr=4e-4", "optimizer.g.lr=1e-4"), tmp_path)
    events = read_events(tmp_path)
    assert events.Scalars("lr/D")[-1].value == pytest.approx(4e-4)
    assert events.Scalars("lr/G")[-1].value == pytest.approx(1e-4)
