import gzip
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from gan_experiments.config import register_configs
from gan_experiments.sweep import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
register_configs()
register_resolvers()

# Small enough for a 2-core CPU: a few steps of tiny networks on 8x8 digits.
EVAL_CACHE = tempfile.mkdtemp(prefix="gan-experiments-test-cache-")
TINY = [
    "data=digits", f"eval.cache_dir={EVAL_CACHE}", "eval.classifier_steps=200", "eval.num_samples=200",
    "trainer.steps=4", "trainer.batch_size=8", "trainer.log_every=2", "trainer.sample_every=2",
    "trainer.checkpoint_every=2", "trainer.num_samples=8", "trainer.progress=false",
]
TINY_MODEL = {
    "dcgan": ["model.g_width=8", "model.d_width=8", "model.latent_dim=8", "data.image_size=8"],
    "mlp": ["model.g_hidden=[16]", "model.d_hidden=[16]", "model.latent_dim=8"],
}


def make_cfg(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def from_conf(option: str, **kwargs):
    """One conf/ option built as a run builds it, e.g. from_conf("data=ring") or
    from_conf("model=mlp", data_shape=(2,), is_image=False): its values come from the YAML, the
    one place that holds them, and `kwargs` replace or add arguments."""
    group = option.split("=", 1)[0]
    from gan_experiments.train import build  # hydra's instantiate, passing our UserError through

    return build(make_cfg(option)[group], **kwargs)


def tiny_cfg(*overrides: str, model: str = "dcgan"):
    return make_cfg(*TINY, f"model={model}", *TINY_MODEL[model], *overrides)


@pytest.fixture(autouse=True)
def _a_fresh_process_stop_flag():
    """`stop.STOPPED` is process-wide, as a sweep run in one process needs it: in pytest's one
    process, a test's signal would otherwise stop every later test's sweep jobs."""
    from gan_experiments import stop

    yield
    stop.STOPPED.clear()


def train(cfg, run_dir: Path, hparams=None, sweep_dir: Path | None = None) -> dict:
    """A run through the runner's own entry (gan_experiments.run.run), as the tests read it:
    status.json's content at the end. A refused start raises StartRefused, and a failed one
    its error, as the command line would report them."""
    from gan_experiments.lifecycle import StartRefused
    from gan_experiments.run import run

    outcome = run(cfg, Path(run_dir), hparams, sweep_dir)
    if outcome.kind == "refused":
        raise StartRefused(outcome.message)
    if outcome.kind in ("failed", "stopped_at_once"):
        raise outcome.error
    return outcome.record.to_json()


def run_cli(*args: str, cwd: Path, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """The real runner in a subprocess, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "gan_experiments", *args], cwd=cwd, capture_output=True,
        text=True, timeout=timeout, **kwargs,
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as the MNIST distribution ships it (big-endian header, uint8 data)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path) -> Path:
    """MNIST-format files for torchvision.datasets.MNIST: 64 train and 16 test images with a
    bright square whose position encodes the label."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("t10k", 16)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 30, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label : 2 * label + 8, 4:12] = 255
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return tmp_path


class NanAfter:
    """A generator loss that turns NaN after `calls` calls: divergence on demand."""

    def __init__(self, calls: int):
        self.calls = calls

    def __call__(self, fake_logits):
        import torch.nn.functional as F

        self.calls -= 1
        loss = F.softplus(-fake_logits).mean()
        return loss * float("nan") if self.calls < 0 else loss


class RaiseAfter:
    """A non-saturating generator loss that raises at its `calls`-th call: a crash in the middle
    of a run, after its start was accepted."""

    def __init__(self, calls: int):
        self.calls = calls

    def __call__(self, fake_logits):
        import torch.nn.functional as F

        self.calls -= 1
        if self.calls == 0:
            raise RuntimeError("a crash in the middle of a step")
        return F.softplus(-fake_logits).mean()


def write_loss_option(config_dir: Path, name: str, generator: str) -> None:
    """A user's loss option in `config_dir`: the non-saturating loss whose generator side is
    `generator`, a class in conftest (jobs in other processes need tests/ on PYTHONPATH)."""
    option = config_dir / "loss" / f"{name}.yaml"
    option.parent.mkdir(parents=True, exist_ok=True)
    option.write_text(f"defaults: [nonsat]\ngenerator: {{_target_: conftest.{generator}, _partial_: false, calls: 2}}\n")


class SignalAfter:
    """A non-saturating generator loss that sends this process `signal` at its `calls`-th call:
    a scheduler's signal at a known step."""

    def __init__(self, calls: int, signal: str):
        self.calls, self.signal = calls, signal

    def __call__(self, fake_logits):
        import os
        import signal

        import torch.nn.functional as F

        self.calls -= 1
        if self.calls == 0:
            os.kill(os.getpid(), getattr(signal, self.signal))
        return F.softplus(-fake_logits).mean()


class SlowNonsaturating:
    """The non-saturating generator loss, `seconds` slower per call: a run whose length in
    seconds barely depends on the machine (the SLURM time-limit test)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, fake_logits):
        import time

        import torch.nn.functional as F

        time.sleep(self.seconds)
        return F.softplus(-fake_logits).mean()


class SweepStopAt:
    """The non-saturating generator loss, `seconds` slower per call, that at its `calls`-th call
    adds a line to the sweep's stop marker `marker`, as a sweep's driver does on a signal, and
    with `direct` also sends this process SIGINT, as a terminal's Ctrl-C reaches a local job.
    Then it sleeps, so the stop is seen while the step still runs."""

    def __init__(self, calls: int, marker: str, direct: bool, seconds: float):
        self.calls, self.marker, self.direct, self.seconds = calls, marker, direct, seconds

    def __call__(self, fake_logits):
        import os
        import signal
        import time

        import torch.nn.functional as F

        self.calls -= 1
        if self.calls == 0:
            if self.direct:
                os.kill(os.getpid(), signal.SIGINT)
            with open(self.marker, "a") as marker:
                marker.write("SIGINT\n")
        time.sleep(self.seconds)
        return F.softplus(-fake_logits).mean()


def read_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


class StopAfter:
    """A generator loss that asks its own process to stop (SIGTERM, as a scheduler would)
    after `calls` calls: an interruption at a known step."""

    def __init__(self, calls: int):
        self.calls = calls

    def __call__(self, fake_logits):
        import os
        import signal

        import torch.nn.functional as F

        self.calls -= 1
        if self.calls == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return F.softplus(-fake_logits).mean()


def tree_snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def fake_cuda(monkeypatch):
    """FAKE CUDA STATE: torch believes `visible(n)` GPUs are visible, for code that keeps per-GPU
    RNG state. torch.cuda.random's own functions run unchanged; only what lies under them is
    replaced: the lazy CUDA initialisation (a no-op; its deferred calls run at once), the
    device count, and `torch.cuda.default_generators`, one real (CPU) torch.Generator per
    visible GPU. As on a real machine, naming a GPU index beyond the visible ones raises
    IndexError. Tensors still live on the CPU: nothing here can run a kernel on a GPU."""
    import torch
    import torch.cuda.random as cuda_random

    def visible(n: int) -> tuple:
        generators = tuple(torch.Generator().manual_seed(1000 + i) for i in range(n))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "default_generators", generators, raising=False)
        monkeypatch.setattr(cuda_random, "_lazy_init", lambda: None)
        monkeypatch.setattr(cuda_random, "_lazy_call", lambda callback, **kwargs: callback())
        monkeypatch.setattr(cuda_random, "device_count", lambda: n)
        monkeypatch.setattr(cuda_random, "current_device", lambda: 0)
        return generators

    return visible


class StrideStrictAdam:
    """Adam that refuses a gradient whose strides differ from its weight's, as CUDA's fused Adam
    kernel does (pytorch/pytorch#126585): on this CPU, torch's own fused Adam accepts them."""

    def __new__(cls, params, **kwargs):
        import torch

        class Strict(torch.optim.Adam):
            def step(self, closure=None):
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is not None and p.grad.stride() != p.stride():
                            raise RuntimeError(f"params and grads must have the same strides: "
                                               f"{p.stride()} vs {p.grad.stride()}")
                return super().step(closure)

        return Strict(params, **kwargs)


def size1_restriding_backend(gm, example_inputs):
    """A torch.compile backend (`trainer.compile_backend=size1_restriding`) whose backward
    returns gradients with other strides in their size-1 dimensions, as Inductor's can on CUDA
    (pytorch/pytorch#126585): autograd keeps them, since such strides do not change the
    layout."""
    import torch
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def restride(t):
        if not isinstance(t, torch.Tensor) or 1 not in t.shape:
            return t
        return t.as_strided(t.shape, [s + 7 if n == 1 else s for n, s in zip(t.shape, t.stride(), strict=True)])

    def backward(bw_gm, inputs):
        def run(args):
            return [restride(out) for out in bw_gm(*args)]
        run._boxed_call = True
        return run

    return aot_autograd(fw_compiler=lambda fw_gm, inputs: make_boxed_func(fw_gm.forward),
                        bw_compiler=backward)(gm, example_inputs)


def _register_test_backends():
    from torch._dynamo import list_backends, register_backend

    if "size1_restriding" not in list_backends(exclude_tags=()):
        register_backend(size1_restriding_backend, name="size1_restriding")


_register_test_backends()


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory) -> Path:
    """An Inception-v3 with random weights, saved in the layout torch-fidelity (and so
    torchmetrics) loads from `feature_extractor_weights_path`: the real weights need a download."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    keep = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None  # keep the random init
    try:
        torch.manual_seed(0)
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=str(folder / "empty.pth"))
    finally:
        FeatureExtractorInceptionV3.load_state_dict = keep
    torch.save(model.state_dict(), folder / "weights-inception-random.pth")
    return folder / "weights-inception-random.pth"


def nan_penalty(discriminator, real, fake, *, pack: int, grad_scale, weight: float):
    """A gradient penalty that has diverged: NaN at every step, in D's gradients too, whatever
    the loss scale."""
    return discriminator(real).float().mean() * float("nan")
