"""The fast paths (device-resident data, autocast, channels_last, fused Adam, torch.compile and
its fallback) train to the same shapes and finite losses on CPU. No timing here: speed is
measured side by side in benchmarks/throughput.py."""

import logging
import math

import pytest
import torch

from conftest import tiny_cfg, train
from gan_experiments import data
from gan_experiments.train import build, build_gan


def test_in_memory_data_lives_on_the_device_as_uint8():
    digits = data.digits(image_size=8, device="cpu")
    assert digits.images.dtype == torch.uint8 and digits.images.device.type == "cpu"
    assert digits.sample(4).dtype == torch.float32


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("model,extra", [("dcgan", []), ("mlp", ["data=ring"])])
def test_autocast_trains_finitely(tmp_path, precision, model, extra):
    summary = train(tiny_cfg(f"trainer.precision={precision}", *extra, model=model), tmp_path)
    assert summary["status"] == "ok"
    assert math.isfinite(summary["metrics"]["final/loss_D"]["value"]) and math.isfinite(summary["metrics"]["final/loss_G"]["value"])


def test_channels_last_and_fused_adam_are_used(tmp_path):
    cfg = tiny_cfg("trainer.channels_last=true")
    generator_data = build(cfg.data, device="cpu")
    gan = build_gan(cfg, generator_data, torch.device("cpu"))
    conv = gan.generator.net[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert gan.opt_g.defaults["fused"] is True
    summary = train(cfg, tmp_path)
    assert summary["status"] == "ok"


def test_compiled_steps_train(tmp_path):
    # The eager backend runs TorchDynamo's capture without a C++ build: quick on any CPU.
    summary = train(tiny_cfg("trainer.compile=true", "trainer.compile_backend=eager"), tmp_path)
    assert summary["status"] == "ok" and math.isfinite(summary["metrics"]["final/loss_G"]["value"])
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["gan"]["generator"]
    assert not any(k.startswith("_orig_mod") for k in state)  # checkpoints stay loadable uncompiled


def test_compile_falls_back_to_eager_where_unsupported(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        summary = train(tiny_cfg("trainer.compile=true", "trainer.compile_backend=no_such_backend"), tmp_path)
    assert summary["status"] == "ok"
    assert any("torch.compile failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("penalty", ["loss=wgan_gp", "loss/penalty=r1"])
def test_compile_with_a_gradient_penalty_falls_back_to_eager(tmp_path, caplog, penalty):
    """AOTAutograd cannot differentiate twice: the probe takes the penalty's double backward
    too, so the run falls back to eager with a warning instead of dying at step 1."""
    import logging

    with caplog.at_level(logging.WARNING):
        summary = train(tiny_cfg(penalty, "trainer.compile=true", "trainer.compile_backend=aot_eager"),
                        tmp_path)
    assert summary["status"] == "ok" and summary["step"] == 4
    assert any("torch.compile failed" in r.getMessage() for r in caplog.records)
