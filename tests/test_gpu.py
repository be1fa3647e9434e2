"""GPU paths on this CPU machine, by simulation (each test says which), and the `gpu`-marked
tests that need a real GPU (skipped without one; benchmarks/gpu_check.sh runs them).

Simulations: FAKE CUDA STATE (the `fake_cuda` fixture: torch believes in N visible GPUs, each
with its own RNG) and Ray's LOGICAL GPUs (`ray start --head --num-gpus=8` on this CPU: Ray
schedules and sets CUDA_VISIBLE_DEVICES as on a GPU node, while torch trains on the CPU)."""

import pytest
import torch

from conftest import tiny_cfg, train
from gan_experiments import checkpoint


def test_the_cuda_rng_state_follows_the_training_device_not_the_gpu_count(fake_cuda):
    """FAKE CUDA STATE. Saved on cuda:1 with 8 GPUs visible, resumed inside a Ray job that sees
    one GPU (cuda:0): the one generator visible must get cuda:1's stream. Saving all 8 states
    and restoring them all raised IndexError here (and, with 8 visible again, gave cuda:1's run
    the stream of cuda:0)."""
    eight = fake_cuda(8)
    eight[1].manual_seed(42)
    expected = eight[1].get_state()
    saved = checkpoint.rng_state(torch.device("cuda", 1))
    assert torch.equal(saved["cuda"], expected)

    one = fake_cuda(1)
    checkpoint.set_rng_state(saved, torch.device("cuda", 0))
    assert torch.equal(one[0].get_state(), expected)


def test_compile_falls_back_to_eager_where_the_fused_optimizer_refuses_compiled_gradients(tmp_path, caplog):
    """The compile probe must take the optimizers' step too: a backend whose gradients a fused
    optimizer refuses (simulated: see conftest.size1_restriding_backend and StrideStrictAdam)
    used to pass the probe and fail the run at step 1."""
    strict = ["optimizer.g._target_=conftest.StrideStrictAdam", "optimizer.d._target_=conftest.StrideStrictAdam"]
    summary = train(tiny_cfg("trainer.compile=true", "trainer.compile_backend=size1_restriding", *strict), tmp_path)
    assert summary["status"] == "ok", summary.get("error")
    assert "torch.compile failed (RuntimeError: params and grads must have the same strides" in caplog.text


class HostTraffic(torch.utils._python_dispatch.TorchDispatchMode):
    """Records each op that reads or writes a CPU tensor, or reads a device tensor's value on
    the host (`.item()`, `bool()`: aten._local_scalar_dense)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if func is torch.ops.aten._local_scalar_dense.default or any(t.device.type == "cpu" for t in tensors):
            self.ops.append(str(func))
        return out


def test_the_ema_update_never_waits_for_the_device():
    """META DEVICE stands in for a GPU: every op of an EMA update must run on the model's device
    and read nothing back. torch's AveragedModel compared and copied its CPU update counter at
    every step (a host-device sync on CUDA)."""
    from gan_experiments.ema import EMA

    generator = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)).to("meta")
    ema = EMA(generator, 0.999)
    with HostTraffic() as traffic:
        for _ in range(3):
            ema.update_parameters(generator)
    assert traffic.ops == []


def test_the_ema_equals_torchs_averaged_model_and_reads_its_checkpoints():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from gan_experiments.ema import EMA

    torch.manual_seed(0)
    generator = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    ours = EMA(generator, 0.9)
    theirs = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.SGD(generator.parameters(), lr=0.1)
    for _ in range(5):
        generator(torch.randn(16, 4)).pow(2).mean().backward()
        optimizer.step()
        ours.update_parameters(generator)
        theirs.update_parameters(generator)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    again = EMA(generator, 0.9)
    again.load_state_dict(theirs.state_dict())
    assert again.n_averaged == 5


def test_deterministic_kernels_change_nothing_on_the_cpu(tmp_path):
    """trainer.deterministic=true takes every op of a run (a double-backward penalty and the
    evaluation included) without raising; on the CPU, whose kernels are deterministic already,
    its numbers are the same bits as without it."""
    common = ["loss=wgan_gp", "trainer.steps=3", "trainer.checkpoint_every=3"]
    plain = train(tiny_cfg(*common), tmp_path / "plain")
    strict = train(tiny_cfg(*common, "trainer.deterministic=true"), tmp_path / "strict")
    assert strict["status"] == "ok" and torch.are_deterministic_algorithms_enabled()
    assert strict["metrics"] == plain["metrics"]
    train(tiny_cfg(*common), tmp_path / "again")
    assert not torch.are_deterministic_algorithms_enabled()  # each run sets it, on or off


def _cuda_cfg(*overrides):
    return tiny_cfg("trainer.device=cuda", *overrides)


@pytest.mark.gpu
@pytest.mark.parametrize("model,loss", [("dcgan", "nonsat"), ("mlp", "nonsat"), ("dcgan", "wgan_gp")])
def test_resume_on_cuda_is_bit_exact_with_deterministic_kernels(tmp_path, model, loss):
    """REAL GPU. The README's promise on CUDA: with trainer.deterministic=true, 2 steps, a
    checkpoint and 2 more equal 4 steps in one go, bit for bit."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    common = [f"loss={loss}", "trainer.deterministic=true", "trainer.checkpoint_every=2", "eval.every=0"]
    whole = train(tiny_cfg("trainer.device=cuda", "trainer.steps=4", *common, model=model), tmp_path / "whole")
    train(tiny_cfg("trainer.device=cuda", "trainer.steps=2", *common, model=model), tmp_path / "split")
    resumed = train(tiny_cfg("trainer.device=cuda", "trainer.steps=4", "resume=true", *common, model=model),
                    tmp_path / "split")
    assert whole["status"] == resumed["status"] == "ok"
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=False)["gan"]
    b = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=False)["gan"]
    for net in ("generator", "discriminator"):
        for key, value in a[net].items():
            assert torch.equal(value, b[net][key]), f"{net}.{key}"
    assert resumed["metrics"] == whole["metrics"]


@pytest.mark.gpu
@pytest.mark.parametrize("overrides", [
    ["trainer.precision=bf16"],
    ["trainer.precision=fp16"],
    ["trainer.precision=fp16", "loss=wgan_gp"],
    ["trainer.channels_last=true", "optimizer.g.fused=true", "optimizer.d.fused=true"],
    ["trainer.compile=true", "optimizer.g.fused=true", "optimizer.d.fused=true"],
], ids=["bf16", "fp16", "fp16_penalty", "channels_last_fused_adam", "compile_fused_adam"])
def test_the_fast_paths_train_on_cuda(tmp_path, overrides):
    """REAL GPU. Each fast path trains to `ok` with finite losses; compile never fails the run
    (it compiles, or falls back to eager with a warning)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    summary = train(_cuda_cfg("trainer.steps=20", "trainer.log_every=10", *overrides), tmp_path)
    assert summary["status"] == "ok", summary.get("error")
    assert all(torch.isfinite(torch.tensor(m["value"])) for m in summary["metrics"].values())


@pytest.mark.slow
def test_an_evaluation_at_50000_samples_holds_a_chunk_of_images_not_all_of_them(tmp_path):
    """Peak resident memory of an evaluation (evaluator set-up and one call) at 50,000 generated
    and 50,000 real 3x32x32 images, in a fresh process. All of them at once are 614 MB per set
    in float32 (the old evaluator held both, and copies, on the device); in chunks of 500 the
    evaluation holds 6 MB of images, 2 x 26 MB of features (and their float64 copies for the
    k-NN metrics), a block of distances and the classifier's activations."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    for prepare in (["--prepare"], []):
        result = subprocess.run([sys.executable, str(here / "eval_memory.py"), "50000", str(tmp_path), *prepare],
                                capture_output=True, text=True, timeout=900,
                                env={**os.environ, "PYTHONPATH": str(here)})
        assert result.returncode == 0, result.stderr
    # Measured: 382 MB here (270 under ATEN_CPU_CAPABILITY=default; the k-NN metrics hold both
    # sets' features in float64, 2 x 51 MB, and one 16 MB block of distances); 1,234 MB with
    # every image at once. A CI run grew by 19 GB while each distance block was a fresh tensor
    # (test_metrics.py's test of the k-NN metrics' memory).
    assert float(result.stdout.split()[-1]) < 500, result.stdout


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_penalty_differentiates_outside_autocast(tmp_path, monkeypatch, precision):
    """PyTorch's AMP recipe for gradient penalties: only D's forward runs under autocast, never
    torch.autograd.grad (autocast on the CPU stands in for CUDA's)."""
    grad, inside = torch.autograd.grad, []

    def recording(*args, **kwargs):
        inside.append(torch.is_autocast_enabled("cpu"))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", recording)
    summary = train(tiny_cfg("loss=wgan_gp", f"trainer.precision={precision}", "trainer.steps=2", "eval.every=0"),
                    tmp_path)
    assert summary["status"] == "ok" and inside and not any(inside)


def test_a_diverged_penalty_is_flagged_under_fp16(tmp_path):
    """fp16 on the CPU stands in for CUDA's: a penalty that stays NaN used to be skipped by the
    loss scaler at every step, the run ending `ok`; once the scale is down to 1 it has
    diverged."""
    summary = train(tiny_cfg("trainer.precision=fp16", "loss/penalty=r1", "loss.penalty.weight=1",
                             "loss.penalty._target_=conftest.nan_penalty", "trainer.steps=40",
                             "trainer.log_every=5", "trainer.checkpoint_every=40", "eval.every=0"), tmp_path)
    assert summary["status"] == "diverged" and summary["step"] < 40


@pytest.mark.gpu
@pytest.mark.slow
def test_jobs_per_gpu_runs_four_processes_on_one_gpu_at_once(tmp_path):
    """REAL GPU. A local Ray sweep of 4 jobs at jobs_per_gpu=4 on a 1-GPU machine: the 4 jobs
    get GPU 0 and train at the same time; nvidia-smi, where it sees this container's processes,
    lists the 4 of them on the GPU at once."""
    import subprocess
    import sys
    import time

    from test_sweep import _nest, jobs_by_gpu

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    from conftest import TINY, TINY_MODEL

    preset = tmp_path / "my_conf" / "experiment" / "tiny_ring.yaml"
    preset.parent.mkdir(parents=True)
    preset.write_text(_nest([*TINY, *TINY_MODEL["mlp"]]))
    driver = subprocess.Popen(
        [sys.executable, "-m", "gan_experiments", "-m", "--config-dir", str(tmp_path / "my_conf"),
         "+experiment=tiny_ring", "seed=range(4)", "jobs_per_gpu=4", "trainer.device=cuda",
         "trainer.steps=3000", "trainer.sample_every=100000", "trainer.checkpoint_every=100000",
         "eval.every=0", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    most = 0
    while driver.poll() is None:
        shown = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                               capture_output=True, text=True).stdout
        most = max(most, len({line.strip() for line in shown.splitlines() if line.strip()}))
        time.sleep(0.5)
    output = driver.communicate()[0]
    assert driver.returncode == 0, output[-3000:]
    (spans,) = jobs_by_gpu(tmp_path / "sweep").values()
    assert len(spans) == 4 and max(s for s, _ in spans) < min(e for _, e in spans)  # all at once
    print(f"nvidia-smi listed at most {most} processes at once")
    assert most in (0, 4), f"nvidia-smi listed at most {most} processes on the GPU at once"
