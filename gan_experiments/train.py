"""The training loop: build everything from the composed config, alternate D and G steps, log,
sample, checkpoint, and stop cleanly on a signal or a non-finite loss."""

import copy
import logging
import math
import random
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from gan_experiments import checkpoint
from gan_experiments.errors import UserError
from gan_experiments.losses import r1_penalty, wgan_gradient_penalty
from gan_experiments.metrics.evaluator import Evaluator
from gan_experiments.summaries import log_hparams, log_samples

log = logging.getLogger(__name__)

SCALARS = ["loss/D", "loss/G", "D/real", "D/fake", "grad_norm/G", "grad_norm/D", "lr/G", "lr/D"]
FINAL_METRICS = ["final/loss_D", "final/loss_G"]
POINTS_PER_IMAGE = 16


@dataclass
class GAN:
    """Everything that training changes, i.e. everything a checkpoint must hold."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    fixed_noise: torch.Tensor
    step: int = 0

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "fixed_noise": self.fixed_noise,
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.fixed_noise = state["fixed_noise"].to(self.fixed_noise.device)
        self.step = state["step"]


@dataclass
class Losses:
    discriminator: callable
    generator: callable
    penalty: str
    penalty_weight: float


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, letting our own UserError through instead of Hydra's wrapper."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise


def make_losses(cfg: DictConfig) -> Losses:
    penalty = cfg.loss.penalty
    return Losses(build(cfg.loss.discriminator), build(cfg.loss.generator),
                  getattr(penalty, "value", penalty), cfg.loss.penalty_weight)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"trainer.device={name} is not a device torch knows; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"trainer.device={name}, but this torch build sees no CUDA GPU. Use trainer.device=auto "
            f"(or cpu), or install a CUDA build of torch on a machine with a GPU."
        )
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def build_gan(cfg: DictConfig, data, device: torch.device) -> GAN:
    generator, discriminator = build(cfg.model, data_shape=data.shape, is_image=data.is_image)
    generator, discriminator = generator.to(device), discriminator.to(device)
    if cfg.trainer.channels_last and data.is_image:
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    opt_g = instantiate(cfg.optimizer.g)(generator.parameters())
    opt_d = instantiate(cfg.optimizer.d)(discriminator.parameters())
    ema = None
    if cfg.trainer.ema_decay > 0:
        ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(cfg.trainer.ema_decay), use_buffers=True)
    # Its own generator, so the grid's noise does not depend on anything else the run draws.
    noise_rng = torch.Generator().manual_seed(cfg.seed)
    # A scatter needs many more points than a grid needs images to show the modes.
    n_fixed = cfg.trainer.num_samples * (1 if data.is_image else POINTS_PER_IMAGE)
    fixed_noise = torch.randn(n_fixed, cfg.model.latent_dim, generator=noise_rng).to(device)
    return GAN(generator, discriminator, opt_g, opt_d, instantiate(cfg.schedule.g)(opt_g),
               instantiate(cfg.schedule.d)(opt_d), ema, fixed_noise)


def maybe_compile(gan: GAN, cfg: DictConfig, data, device: torch.device) -> None:
    """torch.compile G and D when asked; fall back to eager, with a warning, where it fails."""
    if not cfg.trainer.compile:
        return
    try:  # compile a throwaway copy first: failures surface at the first call, not at compile()
        probe_g, probe_d = copy.deepcopy(gan.generator), copy.deepcopy(gan.discriminator)
        probe_g.compile(backend=cfg.trainer.compile_backend)
        probe_d.compile(backend=cfg.trainer.compile_backend)
        z = torch.randn(cfg.trainer.batch_size, cfg.model.latent_dim, device=device)
        probe_d(probe_g(z)).sum().backward()
    except Exception as error:  # any backend failure means: run eagerly
        log.warning("torch.compile failed (%s: %s); training without it.", type(error).__name__, error)
        return
    gan.generator.compile(backend=cfg.trainer.compile_backend)
    gan.discriminator.compile(backend=cfg.trainer.compile_backend)


def instance_noise_std(step: int, initial: float, anneal_steps: int) -> float:
    """Linearly annealed from `initial` at step 0 to 0 at `anneal_steps` (Sonderby et al. 2017)."""
    if initial <= 0 or anneal_steps <= 0:
        return 0.0
    return initial * max(0.0, 1.0 - step / anneal_steps)


def grad_norm(module: torch.nn.Module) -> torch.Tensor:
    return torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None])


def train_step(gan: GAN, data, losses: Losses, tc: DictConfig, noise_std: float,
               scalers, autocast, measure: bool) -> dict:
    """One generator update after `tc.d_steps` discriminator updates. Returns device tensors:
    nothing here waits for the GPU."""
    G, D, batch = gan.generator, gan.discriminator, tc.batch_size
    scaler_g, scaler_d = scalers
    latent = gan.fixed_noise.shape[1]
    stats = {}

    def noisy(x):  # instance noise on everything D sees
        return x + noise_std * torch.randn_like(x) if noise_std > 0 else x

    for d_step in range(tc.d_steps):
        real = noisy(data.sample(batch))
        if tc.channels_last and real.dim() == 4:
            real = real.contiguous(memory_format=torch.channels_last)
        real.requires_grad_(losses.penalty == "r1")
        # The last D step's fakes also serve the G step (as in seed 000 and pytorch/examples),
        # so only they keep G's graph.
        with torch.set_grad_enabled(d_step == tc.d_steps - 1), autocast():
            fake = G(torch.randn(batch, latent, device=real.device))
        with autocast():
            real_logits, fake_logits = D(real), D(noisy(fake.detach()))
            d_loss = losses.discriminator(real_logits, fake_logits)
            if losses.penalty == "wgan_gp":
                penalty = wgan_gradient_penalty(D, real, noisy(fake.detach()))
            elif losses.penalty == "r1":
                penalty = r1_penalty(real_logits, real)
            else:
                penalty = torch.zeros((), device=real.device)
        gan.opt_d.zero_grad(set_to_none=True)
        scaler_d.scale(d_loss + losses.penalty_weight * penalty).backward()
        if measure:
            scaler_d.unscale_(gan.opt_d)
            stats["grad_norm/D"] = grad_norm(D)
        scaler_d.step(gan.opt_d)
        scaler_d.update()

    D.requires_grad_(False)  # G's step needs gradients through D, not for D's weights
    with autocast():
        g_loss = losses.generator(D(noisy(fake)))
    gan.opt_g.zero_grad(set_to_none=True)
    scaler_g.scale(g_loss).backward()
    D.requires_grad_(True)
    if measure:
        scaler_g.unscale_(gan.opt_g)
        stats["grad_norm/G"] = grad_norm(G)
    scaler_g.step(gan.opt_g)
    scaler_g.update()

    gan.sched_g.step()
    gan.sched_d.step()
    if gan.ema is not None:
        gan.ema.update_parameters(G)
    gan.step += 1
    stats.update({
        "loss/D": d_loss.detach(), "loss/G": g_loss.detach(), "loss/penalty": penalty.detach(),
        "D/real": torch.sigmoid(real_logits.detach().float()).mean(),
        "D/fake": torch.sigmoid(fake_logits.detach().float()).mean(),
    })
    return stats


@contextmanager
def stop_requests():
    """SIGTERM and SIGINT set a flag that the loop checks between steps, so a run that is asked
    to stop still writes its checkpoint."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: requested.set())
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _autocast_factory(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train(cfg: DictConfig, run_dir: Path, hparams: dict | None = None) -> dict:
    """Train as `cfg` says, writing into `run_dir`. Returns the final summary written to
    status.json: status (ok | diverged | interrupted), step, final losses."""
    tc = cfg.trainer
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    if ckpt_path.exists() and not cfg.resume:
        raise UserError(
            f"{run_dir} already holds a checkpoint. Pass resume=true to continue that run, or "
            f"choose a new hydra.run.dir: a new run here would overwrite it."
        )
    for name in ("steps", "batch_size", "d_steps", "log_every", "sample_every", "checkpoint_every"):
        if tc[name] < 1:
            raise UserError(f"trainer.{name} must be at least 1, got {tc[name]}.")
    device = resolve_device(tc.device)
    saved = checkpoint.load(ckpt_path, device) if cfg.resume else None
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if saved is not None:
        differences = checkpoint.config_differences(saved["config"], config)
        if differences:
            raise UserError(
                f"Cannot resume {run_dir}: the config differs from the one it was trained with in "
                f"{'; '.join(differences)}. Resume with the original values (shown first), or start "
                f"a new run in another hydra.run.dir."
            )

    seed_everything(cfg.seed)
    data = build(cfg.data, device=device)
    gan = build_gan(cfg, data, device)
    losses = make_losses(cfg)
    reference_points = None if data.is_image else data.sample(
        tc.num_samples * POINTS_PER_IMAGE, generator=torch.Generator(device).manual_seed(cfg.seed))
    if saved is not None:
        gan.load_state_dict(saved["gan"])
        checkpoint.set_rng_state(saved["rng"])
        log.info("Resumed %s at step %d.", run_dir, gan.step)
    evaluator = Evaluator(cfg.eval, data, cfg.model.latent_dim, device, cfg.seed)
    objective = evaluator.objective(cfg.eval.objective)
    maybe_compile(gan, cfg, data, device)
    fp16 = config["trainer"]["precision"] == "fp16"
    scalers = (torch.amp.GradScaler(device.type, enabled=fp16), torch.amp.GradScaler(device.type, enabled=fp16))
    autocast = _autocast_factory(device, str(config["trainer"]["precision"]))

    # Events up to the checkpoint's step were written before it; later ones are redone now.
    writer = SummaryWriter(str(run_dir), purge_step=gan.step + 1 if saved is not None else None)
    # The generators whose samples and metrics are logged, by tag suffix.
    generators = {"": gan.generator, **({"_ema": gan.ema.module} if gan.ema is not None else {})}
    metric_tags = [f"metrics{suffix}/{name}" for suffix in generators for name in evaluator.names]
    log_hparams(writer, hparams or checkpoint.flatten(config), FINAL_METRICS + metric_tags)
    checkpoint.write_json(run_dir / "status.json", {"status": "running", "step": gan.step})

    def save_checkpoint():
        checkpoint.save(ckpt_path, {"gan": gan.state_dict(), "rng": checkpoint.rng_state(), "config": config,
                                    "data_shape": data.shape, "is_image": data.is_image})
        checkpoint.write_json(run_dir / "status.json", {"status": "running", "step": gan.step})

    def sample_now():
        for suffix, g in generators.items():
            tag = f"samples{suffix}"
            was_training = g.training
            g.eval()
            with torch.no_grad():
                fake = g(gan.fixed_noise)
            g.train(was_training)
            log_samples(writer, tag, fake, reference_points, gan.step,
                        run_dir / tag / f"step_{gan.step:06d}.png")

    def evaluate_now() -> dict:
        results = {f"metrics{suffix}/{k}": v for suffix, g in generators.items() for k, v in evaluator(g).items()}
        for tag, value in results.items():
            writer.add_scalar(tag, value, gan.step)
        return results

    status, last, metrics = "ok", {}, {}
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    bar = tqdm(total=tc.steps, initial=gan.step, disable=not tc.progress, dynamic_ncols=True, desc="train")
    with stop_requests() as stop:
        while gan.step < tc.steps:
            noise_std = instance_noise_std(gan.step, tc.instance_noise, tc.instance_noise_steps or tc.steps)
            measure = (gan.step + 1) % tc.log_every == 0 or gan.step + 1 == tc.steps
            stats = train_step(gan, data, losses, tc, noise_std, scalers, autocast, measure)
            # Accumulated on the device; read only when logging, so the step never syncs.
            nonfinite |= ~(torch.isfinite(stats["loss/D"]) & torch.isfinite(stats["loss/G"]))
            bar.update(1)
            at_checkpoint = gan.step % tc.checkpoint_every == 0 or gan.step == tc.steps
            if measure or at_checkpoint or stop.is_set():
                if nonfinite.item():
                    status = "diverged"
                    log.error("Non-finite loss by step %d: stopping; the last good checkpoint is kept.", gan.step)
                    break
            if measure:
                last = {k: v.item() for k, v in stats.items()}
                last.update({"lr/G": gan.opt_g.param_groups[0]["lr"], "lr/D": gan.opt_d.param_groups[0]["lr"]})
                if noise_std > 0:
                    last["instance_noise/std"] = noise_std
                for tag, value in last.items():
                    if tag != "loss/penalty" or losses.penalty != "none":
                        writer.add_scalar(tag, value, gan.step)
                bar.set_postfix(D=f"{last['loss/D']:.3f}", G=f"{last['loss/G']:.3f}",
                                Dx=f"{last['D/real']:.2f}", DGz=f"{last['D/fake']:.2f}")
            if gan.step % tc.sample_every == 0 or gan.step == tc.steps:
                sample_now()
            if evaluator.enabled and (gan.step == tc.steps or cfg.eval.every and gan.step % cfg.eval.every == 0):
                metrics = evaluate_now()
            if at_checkpoint or stop.is_set():
                save_checkpoint()
            if stop.is_set():
                status = "interrupted"
                log.warning("Stop requested: checkpoint written at step %d.", gan.step)
                break
    bar.close()

    summary = {"status": status, "step": gan.step}
    if status != "diverged" and last:
        summary.update({"final/loss_D": last["loss/D"], "final/loss_G": last["loss/G"]})
        for tag in FINAL_METRICS:
            writer.add_scalar(tag, summary[tag], gan.step)
        summary.update(metrics)
        checkpoint.write_json(run_dir / "metrics.json", {"step": gan.step, **evaluator.info, **metrics})
    summary["objective"] = objective
    summary["value"] = summary.get(f"metrics/{objective}", summary.get(f"final/{objective}", math.nan))
    writer.close()
    checkpoint.write_json(run_dir / "status.json", summary)
    return summary


def final_value(summary: dict) -> float:
    """What the runner returns to Hydra (and so to a sweeper): the value of eval.objective."""
    return float(summary.get("value", math.nan))
