"""The training loop: set up from the composed config, alternate D and G steps, log, sample,
checkpoint, and finish with the run's status; stop cleanly on a signal or a non-finite loss.

`train()` reads as its three steps: `set_up`, `run_loop`, `finish`. The start checks and
status.json belong to `lifecycle`."""

import copy
import errno
import logging
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from gan_experiments import checkpoint
from gan_experiments.data import check_batch_size
from gan_experiments.ema import EMA
from gan_experiments.errors import UserError
from gan_experiments.lifecycle import (
    RunPaths,
    RunStatus,
    Start,
    StartRefused,
    claim,
    decide_start,
)
from gan_experiments.losses import no_penalty
from gan_experiments.metrics.evaluator import Evaluator, check_cache_dir, resolve_objective
from gan_experiments.models import check_batch_norm, check_pack
from gan_experiments.progress import Progress
from gan_experiments.stop import StopNow, stop_requests
from gan_experiments.summaries import HParams, log_hparams, log_layout, log_samples

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
    ema: EMA | None
    fixed_noise: torch.Tensor
    step: int = 0

    @property
    def device(self) -> torch.device:
        return self.fixed_noise.device

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
    """The run's loss functions, from conf/loss: `penalty(D, real, fake, grad_scale=...)` is
    the weighted gradient penalty on D, or None."""

    discriminator: Callable
    generator: Callable
    penalty: Callable | None

    def gradient_penalty(self, D, real, fake, grad_scale) -> torch.Tensor:
        if self.penalty is None:
            return torch.zeros((), device=real.device)
        return self.penalty(D, real, fake, grad_scale=grad_scale)


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, letting our own UserError through instead of Hydra's wrapper."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise


def make_losses(cfg: DictConfig) -> Losses:
    """The loss functions of conf/loss. A penalty of weight 0 is none: it is not computed.
    Raises UserError for a weight given to loss/penalty=none."""
    weight = cfg.loss.penalty.weight
    # PacGAN: D judges packs of samples, so a gradient penalty is taken per pack.
    penalty = build(cfg.loss.penalty, pack=cfg.model.pack)
    if penalty.func is no_penalty and weight != 0:
        raise UserError(f"loss.penalty.weight={weight}, but no gradient penalty is chosen "
                        f"(loss/penalty=none). Choose one, e.g. loss/penalty=r1 or loss/penalty=wgan_gp, "
                        f"or drop loss.penalty.weight.")
    return Losses(build(cfg.loss.discriminator), build(cfg.loss.generator), penalty if weight != 0 else None)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StartRefused(f"trainer.device={name} is not a device torch knows; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StartRefused(
            f"trainer.device={name}, but this torch build sees no CUDA GPU. Use trainer.device=auto "
            f"(or cpu), or install a CUDA build of torch on a machine with a GPU."
        )
    try:  # e.g. cuda:3 where CUDA_VISIBLE_DEVICES leaves one GPU
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise StartRefused(f"trainer.device={name} cannot be used here ({error}). Use trainer.device=auto, "
                           f"or a device this process sees.") from None
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def use_deterministic_kernels(on: bool) -> None:
    """With `on`, torch picks deterministic kernels and raises on an op that has none, cuDNN does
    not autotune, and cuBLAS gets the fixed workspace it needs for deterministic results
    (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS starts; PyTorch's "Reproducibility" notes). Set
    for every run, on or off: the jobs of a sequential sweep share one process."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def build_gan(cfg: DictConfig, data, device: torch.device) -> GAN:
    check_pack(cfg.trainer.batch_size, cfg.model.pack)
    generator, discriminator = build(cfg.model, data_shape=data.shape, is_image=data.is_image)
    check_batch_norm(generator, discriminator, cfg.trainer.batch_size, cfg.model.pack)
    generator, discriminator = generator.to(device), discriminator.to(device)
    if cfg.trainer.channels_last and data.is_image:
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    opt_g = instantiate(cfg.optimizer.g)(generator.parameters())
    opt_d = instantiate(cfg.optimizer.d)(discriminator.parameters())
    ema = None
    if cfg.trainer.ema_decay > 0:
        ema = EMA(generator, cfg.trainer.ema_decay)
    # Its own generator, so the grid's noise does not depend on anything else the run draws.
    noise_rng = torch.Generator().manual_seed(cfg.seed)
    # A scatter needs many more points than a grid needs images to show the modes.
    n_fixed = cfg.trainer.num_samples * (1 if data.is_image else POINTS_PER_IMAGE)
    fixed_noise = torch.randn(n_fixed, cfg.model.latent_dim, generator=noise_rng).to(device)
    return GAN(generator, discriminator, opt_g, opt_d, instantiate(cfg.schedule.g)(opt_g),
               instantiate(cfg.schedule.d)(opt_d), ema, fixed_noise)


def maybe_compile(gan: GAN, losses: Losses, autocast: Callable, cfg: DictConfig, device: torch.device) -> None:
    """torch.compile G and D when asked; fall back to eager, with a warning, where it fails."""
    if not cfg.trainer.compile:
        return
    # The probe's random numbers come from a forked RNG: with or without compile, and resumed
    # or not, the run draws the same stream.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        try:  # compile a throwaway copy first: failures surface at the first call, not at compile()
            probe_g, probe_d = copy.deepcopy(gan.generator), copy.deepcopy(gan.discriminator)
            probe_g.compile(backend=cfg.trainer.compile_backend)
            probe_d.compile(backend=cfg.trainer.compile_backend)
            # The step the run will take, its gradient penalty's double backward included
            # (AOTAutograd compiles a forward and backward that cannot be differentiated again).
            z = torch.randn(cfg.trainer.batch_size, cfg.model.latent_dim, device=device)
            with autocast():
                fake = probe_g(z)
                real = torch.randn_like(fake)
                if cfg.trainer.channels_last and real.dim() == 4:  # as train_step feeds D
                    real = real.contiguous(memory_format=torch.channels_last)
                loss = probe_d(fake).float().sum() + probe_d(real).float().sum()
            penalty = losses.gradient_penalty(under(autocast, probe_d), real, fake.detach(),
                                              torch.ones((), device=device))
            (loss + penalty).backward()
            # And the optimizers' step: CUDA's fused Adam refuses gradients whose strides
            # differ from their weights' in size-1 dimensions, as Inductor's can
            # (pytorch/pytorch#126585).
            instantiate(cfg.optimizer.g)(probe_g.parameters()).step()
            instantiate(cfg.optimizer.d)(probe_d.parameters()).step()
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
    """One generator update after `tc.d_steps` discriminator updates. Returns the step's
    statistics and whether its losses were finite, as device tensors: nothing here waits for
    the GPU."""
    G, D, batch = gan.generator, gan.discriminator, tc.batch_size
    scaler_g, scaler_d = scalers
    latent = gan.fixed_noise.shape[1]
    stats = {}
    penalty_finite = torch.ones((), dtype=torch.bool, device=gan.fixed_noise.device)

    def noisy(x):  # instance noise on everything D sees
        return x + noise_std * torch.randn_like(x) if noise_std > 0 else x

    for d_step in range(tc.d_steps):
        real = noisy(data.sample(batch))
        if tc.channels_last and real.dim() == 4:
            real = real.contiguous(memory_format=torch.channels_last)
        # The last D step's fakes also serve the G step (as in seed 000 and pytorch/examples),
        # so only they keep G's graph.
        with torch.set_grad_enabled(d_step == tc.d_steps - 1), autocast():
            fake = G(torch.randn(batch, latent, device=real.device))
        # The penalty's input gradient is taken on the scaled output and unscaled (1 without
        # fp16), outside autocast: PyTorch's AMP recipe for gradient penalties.
        grad_scale = scaler_d.scale(torch.ones((), device=real.device))
        with autocast():
            fake_seen = noisy(fake.detach())  # the penalty interpolates towards these same fakes
            real_logits, fake_logits = D(real), D(fake_seen)
            d_loss = losses.discriminator(real_logits, fake_logits)
        penalty = losses.gradient_penalty(under(autocast, D), real, fake_seen, grad_scale)
        # With fp16, a non-finite penalty is an overflow that the scaler skips and backs off
        # from, until the scale is down to 1: then the penalty itself has diverged.
        penalty_finite &= torch.isfinite(penalty) | (grad_scale > 1)
        gan.opt_d.zero_grad(set_to_none=True)
        scaler_d.scale(d_loss + penalty).backward()
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
    finite = torch.isfinite(d_loss) & torch.isfinite(g_loss) & penalty_finite
    stats.update({
        "loss/D": d_loss.detach(), "loss/G": g_loss.detach(), "loss/penalty": penalty.detach(),
        "D/real": torch.sigmoid(real_logits.detach().float()).mean(),
        "D/fake": torch.sigmoid(fake_logits.detach().float()).mean(),
    })
    return stats, finite


def under(autocast: Callable, module: torch.nn.Module) -> Callable:
    """`module`'s forward under `autocast`, for a penalty that differentiates it outside."""
    def forward(x):
        with autocast():
            return module(x)
    return forward


def _autocast_factory(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@dataclass
class Session:
    """A started run: what the loop, its logging and its checkpoints work with."""

    cfg: DictConfig
    run_dir: Path
    config: dict  # the resolved config, saved with every checkpoint
    status: RunStatus
    data: object
    gan: GAN
    losses: Losses
    evaluator: Evaluator
    scalers: tuple
    autocast: Callable
    writer: SummaryWriter
    reference_points: torch.Tensor | None
    progress: Progress
    noise_horizon: int  # fixed at the first start: raising trainer.steps on resume keeps it
    last: dict = field(default_factory=dict)  # the last logged scalars, at `last_step`
    last_step: int = 0
    metrics: dict = field(default_factory=dict)  # tag -> {"value", "step"}

    @property
    def generators(self) -> dict[str, torch.nn.Module]:
        """The generators whose samples and metrics are logged, by tag suffix."""
        ema = {"_ema": self.gan.ema.module} if self.gan.ema is not None else {}
        return {"": self.gan.generator, **ema}


@dataclass
class Parts:
    """What a start builds before it is accepted: building it checks the input."""

    progress: Progress
    data: object
    gan: GAN
    losses: Losses
    objective: str  # the metric the run returns, eval.objective resolved for this data


def build_parts(cfg: DictConfig, device: torch.device, show_progress: bool) -> Parts:
    """Seed, load the data, build G, D and the losses. Bad input (a missing file, a size the
    model cannot take, a pack that does not divide the batch, BatchNorm over one example, a
    streamed set smaller than a batch, a weight without a penalty, an objective the run does
    not measure) raises UserError here, before the start writes anything."""
    progress = Progress(show_progress)
    seed_everything(cfg.seed)
    use_deterministic_kernels(cfg.trainer.deterministic)
    with progress.phase(f"Loading data ({cfg.data._target_.rsplit('.', 1)[-1]})"):
        data = build(cfg.data, device=device)
    check_batch_size(data, cfg.trainer.batch_size)
    check_cache_dir(cfg.eval, data)
    return Parts(progress, data, build_gan(cfg, data, device), make_losses(cfg),
                 resolve_objective(cfg.eval, data))


def set_up(cfg: DictConfig, run_dir: Path, device: torch.device, parts: Parts, saved: dict | None,
           config: dict, status: RunStatus, hparams: HParams | None) -> Session:
    tc = cfg.trainer
    progress, data, gan = parts.progress, parts.data, parts.gan
    reference_points = None if data.is_image else data.sample(
        tc.num_samples * POINTS_PER_IMAGE, generator=torch.Generator(device).manual_seed(cfg.seed))
    fp16 = config["trainer"]["precision"] == "fp16"
    scalers = (torch.amp.GradScaler(device.type, enabled=fp16), torch.amp.GradScaler(device.type, enabled=fp16))
    saved = saved or {}
    status.origin["arithmetic"] = checkpoint.arithmetic(device)  # recorded with the run's status
    if saved:
        gan.load_state_dict(saved["gan"])
        for scaler, state in zip(scalers, saved.get("scalers") or (), strict=False):
            scaler.load_state_dict(state)  # fp16 resumes with the loss scale it had reached
        checkpoint.set_rng_state(saved["rng"], device)
        log.info("Resumed %s at step %d.", run_dir, gan.step)
        changes = checkpoint.arithmetic_changes(saved.get("arithmetic"), status.origin["arithmetic"])
        if changes:
            status.origin["resumed_on_other_arithmetic"] = [
                *status.origin.get("resumed_on_other_arithmetic", []), *changes]
            log.warning("Resumed on other arithmetic (%s): the run continues as the same experiment, "
                        "but is no longer bit-exact with an uninterrupted one.", "; ".join(changes))
    evaluator = Evaluator(cfg.eval, data, cfg.model.latent_dim, device, cfg.seed, progress)
    status.objective = parts.objective
    autocast = _autocast_factory(device, str(config["trainer"]["precision"]))
    maybe_compile(gan, parts.losses, autocast, cfg, device)
    # Events up to the checkpoint's step were written before it; later ones are redone now.
    writer = SummaryWriter(str(run_dir), purge_step=gan.step + 1 if saved else None)
    session = Session(
        cfg, run_dir, config, status, data, gan, parts.losses, evaluator, scalers,
        autocast, writer, reference_points,
        progress, noise_horizon=saved.get("noise_horizon") or _first_horizon(saved.get("config"), tc),
        last=saved.get("last", {}), last_step=saved.get("last_step", 0), metrics=saved.get("metrics", {}),
    )
    metric_tags = [f"metrics{suffix}/{name}" for suffix in session.generators for name in evaluator.names]
    log_hparams(writer, hparams or HParams(checkpoint.flatten(config)), FINAL_METRICS + metric_tags)
    log_layout(writer)
    return session


def _first_horizon(saved_config: dict | None, tc: DictConfig) -> int:
    """The instance-noise horizon of the run's first start (older checkpoints did not save it)."""
    trainer = saved_config["trainer"] if saved_config else tc
    return trainer["instance_noise_steps"] or trainer["steps"]


def save_checkpoint(s: Session) -> None:
    checkpoint.save(RunPaths(s.run_dir).checkpoint, {
        "gan": s.gan.state_dict(), "rng": checkpoint.rng_state(s.gan.device), "config": s.config,
        "data_shape": s.data.shape, "is_image": s.data.is_image,
        "scalers": [scaler.state_dict() for scaler in s.scalers], "noise_horizon": s.noise_horizon,
        "last": s.last, "last_step": s.last_step, "metrics": s.metrics,
        "arithmetic": checkpoint.arithmetic(s.gan.device),
    })


def log_scalars(s: Session, stats: dict, noise_std: float) -> None:
    s.last = {k: v.item() for k, v in stats.items()}
    s.last.update({"lr/G": s.gan.opt_g.param_groups[0]["lr"], "lr/D": s.gan.opt_d.param_groups[0]["lr"]})
    if noise_std > 0:
        s.last["instance_noise/std"] = noise_std
    s.last_step = s.gan.step
    for tag, value in s.last.items():
        if tag != "loss/penalty" or s.losses.penalty is not None:
            s.writer.add_scalar(tag, value, s.gan.step)


def sample_now(s: Session) -> None:
    for suffix, g in s.generators.items():
        tag = f"samples{suffix}"
        was_training = g.training
        g.eval()
        with torch.no_grad():
            fake = g(s.gan.fixed_noise)
        g.train(was_training)
        log_samples(s.writer, tag, fake, s.reference_points, s.gan.step,
                    RunPaths(s.run_dir).sample(s.gan.step, tag))


def evaluate_now(s: Session) -> None:
    for suffix, g in s.generators.items():
        for name, value in s.evaluator(g).items():
            tag = f"metrics{suffix}/{name}"
            s.writer.add_scalar(tag, value, s.gan.step)
            s.metrics[tag] = {"value": value, "step": s.gan.step, "measured": s.evaluator.measured[name]}


def run_loop(s: Session, stop: threading.Event) -> str:
    """Train up to trainer.steps, or until `stop` is set. Returns how the loop ended:
    ok | diverged | interrupted."""
    cfg, tc, gan = s.cfg, s.cfg.trainer, s.gan
    nonfinite = torch.zeros((), dtype=torch.bool, device=gan.fixed_noise.device)
    bar = s.progress.bar("Training", tc.steps, initial=gan.step)
    outcome = "ok"
    while gan.step < tc.steps:
        noise_std = instance_noise_std(gan.step, tc.instance_noise, s.noise_horizon)
        measure = (gan.step + 1) % tc.log_every == 0 or gan.step + 1 == tc.steps
        stats, finite = train_step(gan, s.data, s.losses, tc, noise_std, s.scalers, s.autocast, measure)
        nonfinite |= ~finite  # read only when logging, so the step never syncs
        bar.update(1)
        at_checkpoint = gan.step % tc.checkpoint_every == 0 or gan.step == tc.steps
        if (measure or at_checkpoint or stop.is_set()) and nonfinite.item():
            log.error("Non-finite loss by step %d: stopping; the last good checkpoint is kept.", gan.step)
            outcome = "diverged"
            break
        if measure:
            log_scalars(s, stats, noise_std)
            bar.set_postfix(D=f"{s.last['loss/D']:.3f}", G=f"{s.last['loss/G']:.3f}",
                            Dx=f"{s.last['D/real']:.2f}", DGz=f"{s.last['D/fake']:.2f}")
        if gan.step % tc.sample_every == 0 or gan.step == tc.steps:
            sample_now(s)
        if s.evaluator.enabled and (gan.step == tc.steps or cfg.eval.every and gan.step % cfg.eval.every == 0):
            bar.set_description_str("Evaluating")
            evaluate_now(s)
            bar.set_description_str("Training")
        if at_checkpoint or stop.is_set():
            save_checkpoint(s)
            s.status.running(gan.step)
        if stop.is_set() and gan.step < tc.steps:
            log.warning("Stop requested: checkpoint written at step %d.", gan.step)
            outcome = "interrupted"
            break
    bar.close()
    return outcome


def finish(s: Session, outcome: str, stopped_by: str = "") -> dict:
    """Write the run's results, each metric with the step it was measured at, and its status.
    `stopped_by`: the signal seen, if any; the status records it only for an interrupted run."""
    step = s.gan.step
    measured_now = any(v["step"] == step for k, v in s.metrics.items() if k.startswith("metrics"))
    if outcome == "ok" and s.evaluator.enabled and not measured_now:
        evaluate_now(s)  # resumed from a checkpoint written at the last step, before its evaluation
    if outcome == "ok" and s.last:
        for tag in FINAL_METRICS:
            s.metrics[tag] = {"value": s.last[tag.replace("final/loss_", "loss/")], "step": s.last_step}
            s.writer.add_scalar(tag, s.metrics[tag]["value"], step)
    s.writer.close()
    checkpoint.write_json(RunPaths(s.run_dir).metrics,
                          {"status": outcome, "step": step, **s.evaluator.info, "metrics": s.metrics})
    return s.status.end(outcome, step, s.metrics, stopped_by)


def resolved(cfg: DictConfig) -> dict:
    """The config as plain values: what a checkpoint records and a start is compared by."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def train(cfg: DictConfig, run_dir: Path, hparams: HParams | None = None,
          on_start: Callable[[], None] | None = None, start: Start | None = None,
          sweep_dir: Path | None = None) -> dict:
    """Train as `cfg` says, writing into `run_dir`; returns what status.json says at the end
    (for a skipped run, what it already said).

    `start` is the caller's decision (`lifecycle.decide_start`), taken while it holds the
    folder (`lifecycle.claim`); without one, train claims the folder and decides itself
    (resume=true continues what the folder holds). The start is accepted once the data, models
    and losses are built; until then bad input, or a signal, raises StartRefused with the run
    dir untouched. After the start (and `on_start`, which the runner uses to record the
    config), any error leaves status `failed` and is raised again. `sweep_dir`: the sweep
    this run is a job of; a stop of the sweep stops the run, and its bars stay off (the jobs
    share one terminal)."""
    run_dir = Path(run_dir)
    config = resolved(cfg)
    if start is None:
        with claim(run_dir):
            start = decide_start(run_dir, config)
            if start.kind == "skip":
                return start.status
            return train(cfg, run_dir, hparams, on_start, start, sweep_dir)
    device = resolve_device(cfg.trainer.device)
    step, session = start.step, None
    status = RunStatus(run_dir, cfg.trainer.steps, resumed_from=step if start.kind == "resume" else None)
    accepted = False  # until the start is accepted, the run dir is as it was
    try:
        # From here on a signal stops the run: at once while it sets up, then at the next
        # step boundary with a checkpoint (gan_experiments.stop).
        with stop_requests(sweep_dir) as stop:
            try:
                parts = build_parts(cfg, device, cfg.trainer.progress and sweep_dir is None)
            except UserError as error:
                raise StartRefused(str(error)) from None
            accepted = True
            if on_start is not None:
                on_start()
            status.running(step)
            session = set_up(cfg, run_dir, device, parts, start.saved, config, status, hparams)
            stop.setting_up = False
            return finish(session, run_loop(session, stop), stop.signal_name)
    except StartRefused:
        raise
    except BaseException as error:
        if isinstance(error, StopNow) and not accepted:  # stopped while the data loaded
            raise StartRefused(f"Stopped by {error.signal_name or 'the sweep'} before the run "
                               f"started.") from None
        if isinstance(error, StopNow) and session is None:  # nothing trained in this leg
            log.warning("Stopped by %s; nothing to checkpoint.", error)
            return status.end("interrupted", step, (start.saved or {}).get("metrics", {}),
                              error.signal_name)
        # A crash, or a second signal: no new checkpoint, status `failed`.
        if session is not None:
            step = session.gan.step
            session.writer.close()
        if accepted:
            try:
                status.failed(step, error)
            except OSError:  # the disk that refused the results refuses the status too
                pass
        if isinstance(error, checkpoint.WriteFailed) or getattr(error, "errno", None) in DISK_FULL:
            raise UserError(write_failure(error, run_dir)) from error
        raise


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # from writers that do not go through atomic_write


def write_failure(error: OSError, run_dir: Path) -> str:
    """The paragraph for a result file that could not be written: which file, the last good
    checkpoint and its step, and how to resume."""
    paths = RunPaths(run_dir)
    try:
        saved = checkpoint.load(paths.checkpoint)
        kept = f"The last good checkpoint is {paths.checkpoint}, at step {saved['gan']['step']}"
    except UserError:
        kept = "No checkpoint was written yet"
    return (f"Could not write {error.filename or 'a result file'} ({error.strerror or error}). {kept}. Free space "
            f"(or fix the disk), then continue with: python -m gan_experiments resume=true "
            f"hydra.run.dir={run_dir} (and the same overrides).")


def final_value(summary: dict) -> float | None:
    """What the runner returns to Hydra (and so to a sweeper): the objective's value, or None
    for a run that did not finish with one, which sweepers such as Optuna record as failed."""
    value = summary.get("value")
    return float(value) if value is not None else None
