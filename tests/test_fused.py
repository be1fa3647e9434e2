"""Seeds as a batch dimension (hydra/launcher=fused): each member of a fused group is its solo
run, started, checkpointed, resumed and recorded as one. The quick tests call the group runner
(`fused.run_group`) in this process on tiny nets; the slow ones run the real launcher."""

import math
from pathlib import Path

import pytest
import torch

from conftest import read_events, tiny_cfg, train
from gan_experiments import fused
from gan_experiments.paths import RunPaths
from gan_experiments.record import RunRecord
from gan_experiments.state import TrainingState

SCALARS = ("loss/D", "loss/G", "D/real", "D/fake", "grad_norm/D", "grad_norm/G")
# Each model as a test trains it: the DCGAN has BatchNorm in G and D (running statistics per
# member), the MLP on the ring none.
SETUPS = {"dcgan": ("dcgan", []), "mlp_ring": ("mlp", ["data=ring"])}


def group(folder: Path, seeds, *overrides, setup="dcgan") -> list[fused.Member]:
    model, extra = SETUPS[setup]
    return [fused.Member(tiny_cfg(*extra, *overrides, f"seed={s}", model=model), folder / f"seed={s}")
            for s in seeds]


def run_fused(folder: Path, seeds, *overrides, setup="dcgan") -> list:
    return fused.run_group(group(folder, seeds, *overrides, setup=setup), folder)


def weights(run_dir: Path) -> dict:
    return TrainingState.load(RunPaths(run_dir).checkpoint)


def assert_same_tree(a, b, exact: bool = True, rtol: float = 1e-5, atol: float = 1e-6, where: str = ""):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if exact:
            assert torch.equal(a, b), where
        else:
            assert torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], exact, rtol, atol, f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, exact, rtol, atol, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_the_fused_dcgan_computes_each_members_network_and_its_gradients(channels_last):
    """fused_layers' forward (G's first layer as a batched matmul, the others as grouped
    convolutions) against each member's own module, outputs and weight gradients."""
    from gan_experiments.models.dcgan import DCGANDiscriminator, DCGANGenerator
    from gan_experiments.stacked import StackedNet

    torch.manual_seed(0)
    n, batch, fmt = 3, 8, torch.channels_last if channels_last else torch.contiguous_format
    for make, x in ((lambda: DCGANGenerator(16, 1, 28, 8), torch.randn(n, batch, 16)),
                    (lambda: DCGANDiscriminator(1, 28, 8, "batch", 1), torch.randn(n, batch, 1, 28, 28))):
        nets = [make().to(memory_format=fmt) for _ in range(n)]
        optimizers = [torch.optim.Adam(m.parameters()) for m in nets]
        schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0) for o in optimizers]
        stacked = StackedNet.of(nets, optimizers, schedules, torch.optim.Adam,
                                lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0))
        fused_out = stacked(x)
        fused_out.square().sum().backward()
        for i, net in enumerate(nets):
            out = net(x[i])
            out.square().sum().backward()
            torch.testing.assert_close(fused_out[i], out, rtol=1e-5, atol=1e-5)
            for name, p in net.named_parameters():
                scale = float(p.grad.abs().max())  # float rounding, relative to the gradient's size
                torch.testing.assert_close(stacked.params[name].grad[i], p.grad, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("setup", SETUPS)
def test_a_member_starts_from_its_solo_runs_weights_and_stream(setup):
    from gan_experiments.train import prepare

    model, extra = SETUPS[setup]
    data = None
    for seed in (0, 1, 2):
        cfg = tiny_cfg(*extra, f"seed={seed}", model=model)
        solo = prepare(cfg, torch.device("cpu"), False)
        solo_stream = torch.get_rng_state()
        data = data or fused.load_data(cfg, torch.device("cpu"))
        member = prepare(cfg, torch.device("cpu"), False, data)
        assert torch.equal(torch.get_rng_state(), solo_stream)  # the member's stream starts where the solo run's does
        assert_same_tree(member.gan.generator.state_dict(), solo.gan.generator.state_dict())
        assert_same_tree(member.gan.discriminator.state_dict(), solo.gan.discriminator.state_dict())
        assert torch.equal(member.gan.fixed_noise, solo.gan.fixed_noise)


@pytest.mark.parametrize("setup", SETUPS)
def test_each_members_first_steps_are_its_solo_runs(tmp_path, setup):
    """Three seeds fused against the same three seeds solo: the logged losses and D's outputs of
    the first steps equal within float tolerance, and so do the weights after them."""
    steps = ["trainer.steps=2", "trainer.log_every=1", "trainer.checkpoint_every=2"]
    outcomes = run_fused(tmp_path / "fused", [0, 1, 2], *steps, setup=setup)
    assert [o.kind for o in outcomes] == ["trained"] * 3 and all(o.record.status == "ok" for o in outcomes)
    model, extra = SETUPS[setup]
    for seed in (0, 1, 2):
        solo_dir = tmp_path / "solo" / f"seed={seed}"
        train(tiny_cfg(*extra, *steps, f"seed={seed}", model=model), solo_dir)
        fused_dir = tmp_path / "fused" / f"seed={seed}"
        f_events, s_events = read_events(fused_dir), read_events(solo_dir)
        for tag in SCALARS:
            got = [(e.step, e.value) for e in f_events.Scalars(tag)]
            want = [(e.step, e.value) for e in s_events.Scalars(tag)]
            assert [s for s, _ in got] == [s for s, _ in want] == [1, 2], tag
            for (_, g), (_, w) in zip(got, want, strict=True):
                assert math.isclose(g, w, rel_tol=1e-5, abs_tol=1e-6), (seed, tag, g, w)
        f_state, s_state = weights(fused_dir), weights(solo_dir)
        assert_same_tree(f_state.gan["generator"], s_state.gan["generator"], exact=False)
        assert_same_tree(f_state.gan["discriminator"], s_state.gan["discriminator"], exact=False)
        # The member's checkpoint has a solo run's layout: Adam's moments per weight, its stream.
        assert_same_tree(f_state.gan["opt_d"], s_state.gan["opt_d"], exact=False, atol=1e-5)
        assert torch.equal(f_state.rng["torch"], s_state.rng["torch"])
    record = RunRecord.read(tmp_path / "fused" / "seed=1")
    assert record.fused_with == [0, 1, 2]


def test_a_fused_group_resumes_bit_exactly_and_a_rerun_skips_it(tmp_path):
    common = ["trainer.checkpoint_every=2", "trainer.log_every=1"]
    run_fused(tmp_path / "straight", [3, 4], "trainer.steps=6", *common)
    run_fused(tmp_path / "legs", [3, 4], "trainer.steps=4", *common)
    outcomes = run_fused(tmp_path / "legs", [3, 4], "trainer.steps=6", *common)  # trains further from step 4
    assert [o.record.status for o in outcomes] == ["ok", "ok"]
    for seed in (3, 4):
        a, b = weights(tmp_path / "straight" / f"seed={seed}"), weights(tmp_path / "legs" / f"seed={seed}")
        assert a.step == b.step == 6
        assert_same_tree(a.gan, b.gan)
        assert_same_tree(a.rng["torch"], b.rng["torch"])
        assert RunRecord.read(tmp_path / "legs" / f"seed={seed}").resumed_from_step == 4
    # Run again: finished members are skipped; a changed config is refused and changes nothing.
    again = run_fused(tmp_path / "legs", [3, 4], "trainer.steps=6", *common)
    assert [o.kind for o in again] == ["skipped", "skipped"]
    before = (tmp_path / "legs" / "seed=3" / "status.json").read_bytes()
    changed = run_fused(tmp_path / "legs", [3, 4], "trainer.steps=6", "optimizer.d.lr=0.1", *common)
    assert [o.kind for o in changed] == ["refused", "refused"]
    assert "optimizer.d.lr" in changed[0].message
    assert (tmp_path / "legs" / "seed=3" / "status.json").read_bytes() == before


def test_a_diverged_member_is_recorded_and_leaves_the_others_as_they_were(tmp_path):
    """Seed 1's weights turn NaN (its checkpoint is poisoned before a resume): it ends
    `diverged` at its first check, and seeds 0 and 2 finish exactly as without it."""
    common = ["trainer.checkpoint_every=2", "trainer.log_every=2"]
    for name in ("poisoned", "clean"):
        run_fused(tmp_path / name, [0, 1, 2], "trainer.steps=2", *common)
    path = RunPaths(tmp_path / "poisoned" / "seed=1").checkpoint
    state = torch.load(path, weights_only=False)
    next(iter(state["gan"]["generator"].values())).fill_(float("nan"))
    torch.save(state, path)
    poisoned = run_fused(tmp_path / "poisoned", [0, 1, 2], "trainer.steps=6", *common)
    run_fused(tmp_path / "clean", [0, 1, 2], "trainer.steps=6", *common)
    assert [o.record.status for o in poisoned] == ["ok", "diverged", "ok"]
    assert poisoned[1].record.step == 4  # found at the first logged step, as a solo run finds it
    assert weights(tmp_path / "poisoned" / "seed=1").step == 2  # its last good checkpoint is kept
    # The others trained on: no NaN reached them. After seed 1 left, they ran as a group of
    # two, whose batched kernels may round otherwise than a group of three's: equal within
    # float tolerance, not bit for bit.
    for seed in (0, 2):
        left, kept = weights(tmp_path / "poisoned" / f"seed={seed}"), weights(tmp_path / "clean" / f"seed={seed}")
        assert left.step == kept.step == 6
        assert all(torch.isfinite(v).all() for v in left.gan["generator"].values())
        assert_same_tree(left.gan["generator"], kept.gan["generator"], exact=False, rtol=1e-3, atol=1e-5)
        assert_same_tree(left.gan["discriminator"], kept.gan["discriminator"], exact=False, rtol=1e-3, atol=1e-5)
    assert RunRecord.read(tmp_path / "poisoned" / "seed=1").status == "diverged"


def test_a_group_whose_every_member_diverges_records_each_one_diverged(tmp_path):
    common = ["trainer.checkpoint_every=2", "trainer.log_every=2"]
    run_fused(tmp_path, [0, 1], "trainer.steps=2", *common)
    for seed in (0, 1):
        path = RunPaths(tmp_path / f"seed={seed}").checkpoint
        state = torch.load(path, weights_only=False)
        next(iter(state["gan"]["discriminator"].values())).fill_(float("inf"))
        torch.save(state, path)
    outcomes = run_fused(tmp_path, [0, 1], "trainer.steps=6", *common)
    assert [(o.kind, o.record.status, o.record.step) for o in outcomes] == [("trained", "diverged", 4)] * 2
    assert [o.kind for o in run_fused(tmp_path, [0, 1], "trainer.steps=6", *common)] == ["skipped"] * 2


def test_a_signal_while_members_sample_checkpoints_every_member_at_its_recorded_step(tmp_path, monkeypatch):
    """SIGTERM arrives while the last member's grid is drawn: the step's checks are behind the
    others by then, so the group stops at the next step, where every member is checkpointed.
    (It used to stop at once: the first members ended `interrupted` at a step their
    checkpoints did not hold.)"""
    import os
    import signal

    drawn = []

    def sample_then_signal(session):
        drawn.append(session.run_dir.name)
        if len(drawn) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(fused, "sample_now", sample_then_signal)
    outcomes = run_fused(tmp_path, [0, 1, 2], "trainer.steps=8", "trainer.sample_every=2",
                         "trainer.checkpoint_every=100", "eval.every=0", setup="mlp_ring")
    assert [o.record.status for o in outcomes] == ["interrupted"] * 3
    for seed, outcome in zip((0, 1, 2), outcomes, strict=True):
        assert outcome.record.step == weights(tmp_path / f"seed={seed}").step == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only where there is no GPU")
def test_a_start_refused_while_the_group_sets_up_leaves_no_folder(tmp_path):
    outcomes = run_fused(tmp_path, [0, 1], "trainer.device=cuda")
    assert [o.kind for o in outcomes] == ["refused"] * 2 and "trainer.device=cuda" in outcomes[0].message
    assert not (tmp_path / "seed=0").exists() and not (tmp_path / "seed=1").exists()


def test_a_members_folder_is_a_solo_runs_folder(tmp_path):
    """A fused member resumes solo and samples like any run; the record keeps that it was fused."""
    from gan_experiments.sample import load_generator

    run_fused(tmp_path, [5, 6], "trainer.steps=2", "trainer.checkpoint_every=2", setup="mlp_ring")
    record = train(tiny_cfg("data=ring", "trainer.steps=4", "seed=6", model="mlp"), tmp_path / "seed=6",
                   sweep_dir=tmp_path)
    assert record["status"] == "ok" and record["resumed_from_step"] == 2 and record["fused_with"] == [5, 6]
    generator = load_generator(tmp_path / "seed=5")
    assert generator(torch.zeros(3, generator.latent_dim)).shape == (3, 2)


@pytest.mark.parametrize("option, named", [
    ("model.spectral_norm=true", "model.spectral_norm"),
    ("loss/penalty=r1", "gradient penalty"),
    ("trainer.precision=bf16", "trainer.precision"),
    ("trainer.ema_decay=0.999", "trainer.ema_decay"),
    ("optimizer=sgd", None),
])
def test_options_a_fused_group_does_not_train_are_refused_in_one_paragraph(tmp_path, option, named):
    outcomes = run_fused(tmp_path, [0, 1], option)
    if named is None:  # SGD updates each weight on its own: it fuses
        assert [o.record.status for o in outcomes] == ["ok", "ok"]
        return
    assert [o.kind for o in outcomes] == ["refused", "refused"]
    message = outcomes[0].message
    assert named in message and "drop hydra/launcher=fused" in message and "\n" not in message
    assert not (tmp_path / "seed=0").exists()  # a refused start writes nothing


def test_a_members_log_lines_go_to_its_own_log_and_the_groups_to_every_trained_members(tmp_path):
    """member_logs in place of Hydra's one job log: a member's lines in its folder's log, the
    group's in each trained member's, none in a skipped member's folder."""
    import logging

    from gan_experiments.member_logs import per_member, writing_to

    dirs = [tmp_path / f"seed={s}" for s in range(3)]
    for d in dirs:
        d.mkdir()
    root, hydra_log = logging.getLogger(), logging.FileHandler(dirs[0] / "__main__.log", delay=True)
    hydra_log.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    hydra_log.name = "file"  # as Hydra's job_logging names it (pytest has file handlers of its own)
    root.addHandler(hydra_log)
    log = logging.getLogger("gan_experiments.test")
    try:
        with per_member(dirs):
            assert hydra_log not in root.handlers
            with writing_to(dirs[:2]):  # seed=2 was skipped: the group trains seeds 0 and 1
                log.warning("the group's line")
                for d in dirs[:2]:
                    with writing_to([d]):
                        log.warning("%s's own line", d.name)
        assert hydra_log not in root.handlers
    finally:
        root.removeHandler(hydra_log)
    for d in dirs[:2]:
        other = dirs[1] if d == dirs[0] else dirs[0]
        assert (d / "__main__.log").read_text() == f"WARNING the group's line\nWARNING {d.name}'s own line\n"
        assert other.name not in (d / "__main__.log").read_text()
    assert not (dirs[2] / "__main__.log").exists()


@pytest.mark.slow
def test_twenty_fused_ring_seeds_are_a_sample_of_the_solo_runs_distribution(tmp_path):
    """20 seeds of PacGAN's 2D nets on the ring, fused and solo: the report's own comparison of
    the final reverse KL cannot tell them apart, and its interval of the difference is as narrow
    as 20 runs a side allow (about 1.2 seed standard deviations wide). The pairs are not copies:
    by step 300 a member's losses are within about 1e-5 of its solo run's (float rounding,
    amplified), but the reverse KL counts which mode each of 200 samples lands in, with only
    a few near a mode this early, so one sample crossing a boundary moves it by about 0.05."""
    from gan_experiments.comparison import compare

    settings = ["data=ring", "trainer.steps=300", "trainer.batch_size=64", "trainer.checkpoint_every=300",
                "trainer.sample_every=300", "trainer.log_every=50", "model.g_hidden=[64,64]",
                "model.d_hidden=[64,64]", "model.latent_dim=2", "model.g_norm=batch", "model.g_activation=relu",
                "model.d_activation=maxout", "model.init_std=0.02"]
    seeds = range(20)
    members = [fused.Member(tiny_cfg(*settings, f"seed={s}", model="mlp"), tmp_path / "fused" / f"seed={s}")
               for s in seeds]
    fused_kl = [o.record.value for o in fused.run_group(members, tmp_path / "fused")]
    solo_kl = [train(tiny_cfg(*settings, f"seed={s}", model="mlp"), tmp_path / "solo" / f"seed={s}")["value"]
               for s in seeds]
    (comparison,) = compare({"fused": fused_kl, "solo": solo_kl}, [("fused", "solo")], higher_is_better=False)
    spread = float(torch.tensor(solo_kl).std())
    print(f"fused - solo reverse KL: {comparison.difference:+.3f} [{comparison.ci[0]:+.3f}, {comparison.ci[1]:+.3f}], "
          f"Welch p {comparison.welch_p:.2f}, seed std {spread:.3f}")
    assert comparison.verdict == "cannot tell at n = 20"
    assert comparison.ci[0] <= 0 <= comparison.ci[1]
    assert abs(comparison.difference) < 0.5 * spread
    assert comparison.ci[1] - comparison.ci[0] < 1.6 * spread  # what two independent sets of 20 give


@pytest.mark.slow
def test_a_fused_sweep_from_the_command_line_reports_reruns_and_resumes_like_a_solo_one(tmp_path):
    """The real launcher: two groups (loss) of three seeds; the report and the rerun decision
    read its folders; a SIGTERM checkpoints every member, and the same command resumes them."""
    import csv
    import json
    import signal
    import subprocess
    import sys
    import time

    from test_sweep import sweep

    sweep_dir = tmp_path / "sweep"
    args = ["loss=nonsat,smooth", "seed=0,1,2", "hydra/launcher=fused", f"hydra.sweep.dir={sweep_dir}"]
    result = sweep(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("started (fused)") == 6 and result.stdout.count(": ok at step 4") == 6
    with open(sweep_dir / "sweep_status.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    job = sweep_dir / "loss=smooth,seed=2"
    assert json.loads((job / "status.json").read_text())["fused_with"] == [0, 1, 2]
    assert (job / ".hydra" / "config.yaml").is_file() and list(job.glob("events.out.tfevents.*"))
    report = subprocess.run([sys.executable, "-m", "gan_experiments.report", str(sweep_dir)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "loss=nonsat" in report.stdout and "loss=smooth" in report.stdout

    again = sweep(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("already ok, skipped") == 6, again.stdout
    changed = sweep(*args, "optimizer.d.lr=0.1", cwd=tmp_path)
    assert changed.stdout.count("start refused") == 6 and "optimizer.d.lr" in changed.stdout

    # Interrupted and resumed: a longer sweep of its own, stopped once every member trains.
    long_dir = tmp_path / "long"
    long_args = ["seed=0,1", "hydra/launcher=fused", f"hydra.sweep.dir={long_dir}", "trainer.steps=3000",
                 "trainer.log_every=50", "trainer.checkpoint_every=100000", "trainer.sample_every=100000",
                 "eval.every=0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "gan_experiments", "-m", "--config-dir", str(tmp_path / "my_conf"),
         "+experiment=tiny_ring", *long_args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(long_dir.glob("seed=*/events.out.tfevents.*"))) < 2:
        time.sleep(0.2)
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    records = [json.loads((long_dir / f"seed={s}" / "status.json").read_text()) for s in (0, 1)]
    assert [r["status"] for r in records] == ["interrupted"] * 2, out
    assert 0 < records[0]["step"] == records[1]["step"] < 3000
    assert all((long_dir / f"seed={s}" / "checkpoints" / "last.pt").is_file() for s in (0, 1))
    resumed = sweep(*long_args, cwd=tmp_path)
    assert resumed.returncode == 0 and resumed.stdout.count("resuming (fused)") == 2, resumed.stdout
    records = [json.loads((long_dir / f"seed={s}" / "status.json").read_text()) for s in (0, 1)]
    assert [(r["status"], r["step"]) for r in records] == [("ok", 3000)] * 2
    assert records[0]["resumed_from_step"] > 0
    # Each member's log is its own, as a solo job's: its resume line, no other member's.
    for s in (0, 1):
        lines = (long_dir / f"seed={s}" / "__main__.log").read_text()
        assert f"Resumed {long_dir / f'seed={s}'} at step" in lines, lines
        assert f"seed={1 - s} at step" not in lines, lines


@pytest.mark.gpu
def test_on_cuda_members_take_their_solo_runs_first_steps_and_resume_bit_exactly(tmp_path):
    """REAL GPU. Each member's training stream is a CUDA generator that starts where the solo
    run's CUDA stream does, and a fused group resumed from its checkpoints equals an
    uninterrupted one with deterministic kernels."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cuda = ["trainer.device=cuda", "trainer.deterministic=true", "trainer.log_every=1", "trainer.checkpoint_every=2"]
    run_fused(tmp_path / "fused", [0, 1], "trainer.steps=2", *cuda)
    for seed in (0, 1):
        solo_dir = tmp_path / "solo" / f"seed={seed}"
        train(tiny_cfg(*cuda, "trainer.steps=2", f"seed={seed}"), solo_dir)
        got, want = read_events(tmp_path / "fused" / f"seed={seed}"), read_events(solo_dir)
        for tag in ("loss/D", "loss/G"):
            assert math.isclose(got.Scalars(tag)[0].value, want.Scalars(tag)[0].value, rel_tol=1e-4), tag
    run_fused(tmp_path / "straight", [0, 1], "trainer.steps=4", *cuda)
    run_fused(tmp_path / "fused", [0, 1], "trainer.steps=4", *cuda)
    for seed in (0, 1):
        assert_same_tree(weights(tmp_path / "straight" / f"seed={seed}").gan, weights(tmp_path / "fused" / f"seed={seed}").gan)
