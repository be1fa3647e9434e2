"""Seed-steps per second of N seeds trained fused (`hydra/launcher=fused`) against the same N
seeds one after another in one process and side by side in one-thread processes (the parallel
launcher's CPU layout), and the operator calls per seed-step that a GPU pays a kernel launch
for, from torch's profiler.

The nets are built from conf/ as the runs build them: the seeds' MLP (loss_study_mlp on MNIST
digits), dcgan_small (the default run) and PacGAN's 2D nets (pacgan_ring). Each side runs the
real training step: `train.train_step` for a solo run, `fused.fused_step` for a group. The data
is random images of the right shape: a step's cost does not depend on the pixels.

    python benchmarks/fused_seeds.py                 # about 10 minutes on a 2-core CPU
    python benchmarks/fused_seeds.py --device cuda   # on a GPU (gpu_check.sh)

Take timings on an otherwise idle machine: the numbers are ratios within this one run.
"""

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NETS = {  # name -> overrides composing it, as its preset does
    "mlp": ["+experiment=loss_study_mlp", "hydra.mode=RUN"],
    "dcgan_small": [],
    "pacgan_2d": ["+experiment=pacgan_ring", "hydra.mode=RUN"],
}


class RandomImages:
    """In-memory data of `shape` (uint8 pixels, as ImageTensorData holds them)."""

    def __init__(self, shape, device):
        from gan_experiments.data import ImageTensorData

        images = torch.randint(0, 256, (5000, *shape), dtype=torch.uint8, device=device)
        self.inner = ImageTensorData(images, None, "random")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def compose(net: str, device: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from gan_experiments.config import register_configs
    from gan_experiments.sweep import register_resolvers

    register_configs()
    register_resolvers()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=[*NETS[net], f"trainer.device={device}"])


def data_for(cfg, device):
    from gan_experiments.train import build

    if cfg.data._target_.endswith(".ring"):
        return build(cfg.data, device=device)
    return RandomImages((1, 28, 28), device)  # MNIST's shape: the mlp and dcgan_small presets train on it


def solo_setup(cfg, data, device, seed):
    from gan_experiments.train import _autocast_factory, build_gan, make_losses, seed_everything

    seed_everything(seed)
    gan = build_gan(cfg, data, device)
    scalers = (torch.amp.GradScaler(device.type, enabled=False), torch.amp.GradScaler(device.type, enabled=False))
    return gan, make_losses(cfg), scalers, _autocast_factory(device, "fp32")


def fused_setup(cfg, data, device, n):
    from hydra.utils import instantiate

    from gan_experiments.fused import Group, check_losses
    from gan_experiments.stacked import StackedNet
    from gan_experiments.train import make_losses

    gans = [solo_setup(cfg, data, device, seed)[0] for seed in range(n)]

    def net(module, opt, sched, name):
        return StackedNet.of([getattr(g, module) for g in gans], [getattr(g, opt) for g in gans],
                             [getattr(g, sched) for g in gans], instantiate(cfg.optimizer[name]),
                             lambda o: instantiate(cfg.schedule[name])(o))

    group = Group([], net("generator", "opt_g", "sched_g", "g"), net("discriminator", "opt_d", "sched_d", "d"), 0,
                  check_losses(make_losses(cfg), n, device))
    generators = [torch.Generator(device).manual_seed(seed) for seed in range(n)]
    return group, generators


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def solo_step(cfg, data, device):
    """One solo run's training step, as a function of the step's index."""
    from gan_experiments.train import train_step

    gan, losses, scalers, autocast = solo_setup(cfg, data, device, 0)

    def step(i):
        train_step(gan, data, losses, cfg.trainer, 0.0, scalers, autocast, measure=False)

    return step


def flops_of(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as flops:
        step(0)
    return flops.get_total_flops()


def fused_step_of(cfg, data, device, n: int):
    """One step of n seeds fused, as a function of the step's index."""
    from gan_experiments.fused import fused_step
    from gan_experiments.train import make_losses

    group, generators = fused_setup(cfg, data, device, n)
    losses, latent = make_losses(cfg), int(cfg.model.latent_dim)

    def step(i):
        fused_step(group, generators, data, losses, cfg.trainer, latent, 0.0, measure=False)

    return step


def timed(step, steps: int, device, repeats: int = 2) -> float:
    """Calls of `step` per second: the best of `repeats` timings of `steps` calls. This
    machine's speed drifts between timings by up to 1.5x; the best of each side is compared."""
    return max(_timed(step, steps, device) for _ in range(repeats))


def _timed(step, steps: int, device) -> float:
    for i in range(3):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return steps / (time.perf_counter() - start)


# Operators that only make a new view of a tensor's memory: no kernel runs for them.
VIEWS = {"aten::view", "aten::_unsafe_view", "aten::reshape", "aten::_reshape_alias", "aten::transpose", "aten::t",
         "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::permute", "aten::flatten", "aten::unflatten",
         "aten::detach", "aten::alias", "aten::as_strided", "aten::select", "aten::slice", "aten::narrow",
         "aten::view_as", "aten::expand_as", "aten::lift_fresh", "aten::empty", "aten::empty_like",
         "aten::empty_strided", "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::is_nonzero",
         "aten::_has_compatible_shallow_copy_type", "aten::to", "aten::_to_copy", "aten::contiguous"}


RANDOM = ("aten::normal_", "aten::random_", "aten::uniform_")


def operator_calls(step, device, steps: int = 3) -> tuple[float, float, float]:
    """Per call of `step`: (top-level operator calls, the autograd engine's backward nodes
    included; kernel launches: the innermost operator calls that are not views; of these, the
    random draws). A GPU pays a launch for each of the latter two; the optimizer's step is one
    top-level call but a kernel per tensor and operation."""
    from torch.profiler import ProfilerActivity, profile

    for i in range(2):  # past the first steps' one-time work (the optimizers' state)
        step(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(i)
        sync(device)
    events = prof.events()
    top = [e for e in events if e.cpu_parent is None and (e.name.startswith(("aten::", "autograd::", "Optimizer."))
                                                         or "Backward" in e.name)]

    def launches(e) -> bool:  # an innermost operator that computes (an aten copy inside a `to` counts)
        inner = [c for c in e.cpu_children if c.name.startswith("aten::")]
        return e.name.startswith("aten::") and not inner and e.name not in VIEWS or (
            e.name in ("aten::copy_",) and not inner)

    kernels = [e for e in events if launches(e)]
    draws = [e for e in kernels if e.name in RANDOM]
    return len(top) / steps, len(kernels) / steps, len(draws) / steps


def _parallel_worker(net, device, seconds, queue, go):
    torch.set_num_threads(1)
    cfg = compose(net, device)
    device = torch.device(device)
    data = data_for(cfg, device)
    from gan_experiments.train import train_step

    gan, losses, scalers, autocast = solo_setup(cfg, data, device, 0)
    for _ in range(3):
        train_step(gan, data, losses, cfg.trainer, 0.0, scalers, autocast, measure=False)
    queue.put("ready")
    go.get()  # all start together
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        train_step(gan, data, losses, cfg.trainer, 0.0, scalers, autocast, measure=False)
        n += 1
    queue.put(n / (time.perf_counter() - start))


def parallel_rate(net: str, device: str, processes: int, seconds: float) -> float:
    """Seed-steps/s of `processes` one-thread processes training at once (the parallel
    launcher's CPU layout, cpus_per_job=1)."""
    ctx = mp.get_context("spawn")
    queues, gos = [ctx.Queue() for _ in range(processes)], [ctx.Queue() for _ in range(processes)]
    procs = [ctx.Process(target=_parallel_worker, args=(net, device, seconds, q, go)) for q, go in zip(queues, gos, strict=True)]
    for p in procs:
        p.start()
    for q in queues:
        got = q.get()
        assert got == "ready", got
    for go in gos:
        go.put("go")
    rates = [q.get() for q in queues]
    for p in procs:
        p.join()
    return sum(rates)


# On paper, for a GPU: each kernel launch costs LAUNCH_S of the GPU's time however little it
# computes, and the FLOPs run at PEAK_FLOPS (H200: fp32 without tensor cores, the conservative
# case; cuDNN's TF32 convolutions are faster).
LAUNCH_S = 5e-6
PEAK_FLOPS = 67e12


def on_paper(kernels_per_seed_step: float, flops_per_seed_step: float) -> float:
    """Seconds per seed-step on the GPU of LAUNCH_S and PEAK_FLOPS: launches plus arithmetic."""
    return kernels_per_seed_step * LAUNCH_S + flops_per_seed_step / PEAK_FLOPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--members", default="1,4,8,20")
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0: about 10 s per cell)")
    args = parser.parse_args()
    device = torch.device(args.device)
    members = [int(n) for n in args.members.split(",")]
    cores = os.cpu_count()
    print(f"# fused seeds, {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, "
          f"device {device}{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
          f"{torch.get_num_threads()} threads\n")
    print("| net | N | one after another (seed-steps/s) | parallel, 1-thread processes | fused | fused / one after "
          "another | fused / parallel | top-level operator calls per seed-step, solo / fused | kernel launches per "
          "seed-step, solo / fused (target ≤ 1.2 × solo / N) | of which random draws, solo / fused | "
          "on paper, GPU: fused / one after another |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for net in args.nets.split(","):
        cfg = compose(net, args.device)
        data = data_for(cfg, device)
        steps = args.steps or (30 if net == "dcgan_small" else 60)
        solo = solo_step(cfg, data, device)
        (solo_top, solo_kernels, solo_draws), flops = operator_calls(solo, device), flops_of(solo)
        parallel = parallel_rate(net, args.device, cores, 8.0) if device.type == "cpu" else float("nan")
        for n in members:
            fused = fused_step_of(cfg, data, device, n)
            top, kernels, draws = (calls / n for calls in operator_calls(fused, device))
            # One after another is timed beside each fused cell, so that both see the same drift.
            solo_before = timed(solo, steps, device)
            fused_rate = n * timed(fused, max(3, steps // max(1, n // 4)), device)
            solo_rate = max(solo_before, timed(solo, steps, device, repeats=1))
            target = 1.2 * solo_kernels / n
            paper = on_paper(solo_kernels, flops) / on_paper(kernels, flops)
            print(f"| {net} | {n} | {solo_rate:.1f} | {parallel:.1f} | {fused_rate:.1f} | {fused_rate / solo_rate:.2f} | "
                  f"{fused_rate / parallel:.2f} | {solo_top:.0f} / {top:.1f} | {solo_kernels:.0f} / {kernels:.1f} "
                  f"(≤ {target:.1f}: {'yes' if kernels <= target else 'no'}) | {solo_draws:.0f} / {draws:.1f} | "
                  f"{paper:.1f}× |", flush=True)
        print(f"<!-- {net}: {flops / 1e6:.1f} MFLOP per seed-step -->", flush=True)


if __name__ == "__main__":
    main()
