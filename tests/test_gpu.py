"""GPU paths on this CPU machine, by simulation (each test says which), and the `gpu`-marked
tests that need a real GPU (skipped without one; benchmarks/gpu_check.sh runs them).

Simulations: FAKE CUDA STATE (the `fake_cuda` fixture: torch believes in N visible GPUs, each
with its own RNG) and Ray's LOGICAL GPUs (`ray start --head --num-gpus=8` on this CPU: Ray
schedules and sets CUDA_VISIBLE_DEVICES as on a GPU node, while torch trains on the CPU)."""

import pytest
import torch

from conftest import tiny_cfg
from gan_experiments import checkpoint
from gan_experiments.train import train

needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


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
