"""The training loop: set up from the composed config, alternate D and G steps, log, sample,
checkpoint, and finish with the run's record; stop cleanly on a signal or a non-finite loss.

`train()` reads as its three steps: `set_up`, `run_loop`, `finish`. Whether and how a run
starts, and what happens when it fails, belong to `gan_experiments.run`."""

import copy
import logging
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gan_experiments import checkpoint
from gan_experiments.data import check_batch_size
from gan_experiments.ema import EMA
from gan_experiments.errors import UserError
from gan_experiments.lifecycle import StartRefused
from gan_experiments.loggers import Loggers
from gan_experiments.metrics.evaluator import Evaluator, check_cache_dir, resolve_objective
from gan_experiments.metrics.registry import tag
from gan_experiments.models import check_batch_norm, check_pack
from gan_experiments.paths import RunPaths
from gan_experiments.progress import Progress
from gan_experiments.record import Measurement, RunRecord, measurements, measurements_json
from gan_experiments.state import GAN, TrainingState
from gan_experiments.stop import StopRequest
from gan_experiments.summaries import HParams, render_samples

log = logging.getLogger(__name__)

SCALARS = ["loss/D", "loss/G", "D/real", "D/fake", "grad_norm/G", "grad_norm/D", "lr/G", "lr/D"]
FINAL_LOSSES = {"loss_D": "loss/D", "loss_G": "loss/G"}  # registry name -> the scalar it ends at
POINTS_PER_IMAGE = 16


@dataclass
class Losses:
    """The run's loss functions, from conf/loss: `penalty(D, real, fake, grad_scale=...)` is
    the weighted gradient penalty on D, or None where the run has none."""

    discriminator: Callable
    generator: Callable
    penalty: Callable | None


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, letting our own UserError through instead of Hydra's wrapper."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise


def make_losses(cfg: DictConfig) -> Losses:
    """The loss functions of conf/loss. No penalty (loss/penalty=none, or a weight of 0) is
    None: it is not computed. Raises UserError for a weight given to loss/penalty=none."""
    chosen, weight = cfg.loss.penalty._target_ is not None, cfg.loss.penalty.weight
    if not chosen and weight != 0:
        raise UserError(f"loss.penalty.weight={weight}, but no gradient penalty is chosen "
                        f"(loss/penalty=none). Choose one, e.g. loss/penalty=r1 or loss/penalty=wgan_gp, "
                        f"or drop loss.penalty.weight.")
    # PacGAN: D judges packs of samples, so a gradient penalty is taken per pack.
    penalty = build(cfg.loss.penalty, pack=cfg.model.pack) if chosen and weight != 0 else None
    return Losses(build(cfg.loss.discriminator), build(cfg.loss.generator), penalty)


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
            if losses.penalty is not None:
                loss = loss + losses.penalty(under(autocast, probe_d), real, fake.detach(),
                                             grad_scale=torch.ones((), device=device))
            loss.backward()
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


def train_step(gan: GAN, data, losses: Losses, trainer: DictConfig, noise_std: float,
               scalers, autocast, measure: bool) -> tuple[dict, torch.Tensor]:
    """One generator update after `trainer.d_steps` discriminator updates. Returns the step's
    statistics and whether its losses were finite, as device tensors: nothing here waits for
    the GPU."""
    G, D, batch = gan.generator, gan.discriminator, trainer.batch_size
    scaler_g, scaler_d = scalers
    stats, penalty_finite = {}, torch.ones((), dtype=torch.bool, device=gan.device)
    for d_step in range(trainer.d_steps):
        real = with_instance_noise(data.sample(batch), noise_std)
        if trainer.channels_last and real.dim() == 4:
            real = real.contiguous(memory_format=torch.channels_last)
        # The last D step's fakes also serve the G step (as in seed 000 and pytorch/examples),
        # so only they keep G's graph.
        with torch.set_grad_enabled(d_step == trainer.d_steps - 1), autocast():
            fake = G(torch.randn(batch, gan.fixed_noise.shape[1], device=real.device))
        # The penalty's input gradient is taken on the scaled output and unscaled (1 without
        # fp16), outside autocast: PyTorch's AMP recipe for gradient penalties.
        grad_scale = scaler_d.scale(torch.ones((), device=real.device))
        with autocast():
            fake_seen = with_instance_noise(fake.detach(), noise_std)  # the penalty's fakes too
            real_logits, fake_logits = D(real), D(fake_seen)
            d_loss = losses.discriminator(real_logits, fake_logits)
        d_total = d_loss
        if losses.penalty is not None:
            penalty = losses.penalty(under(autocast, D), real, fake_seen, grad_scale=grad_scale)
            # With fp16, a non-finite penalty is an overflow that the scaler skips and backs
            # off from, until the scale is down to 1: then the penalty itself has diverged.
            penalty_finite &= torch.isfinite(penalty) | (grad_scale > 1)
            stats["loss/penalty"] = penalty.detach()
            d_total = d_loss + penalty
        stats["grad_norm/D"] = update(d_total, gan.opt_d, scaler_d, D, measure)

    D.requires_grad_(False)  # G's step needs gradients through D, not for D's weights
    with autocast():
        g_loss = losses.generator(D(with_instance_noise(fake, noise_std)))
    stats["grad_norm/G"] = update(g_loss, gan.opt_g, scaler_g, G, measure)
    D.requires_grad_(True)
    gan.end_step()
    stats.update({
        "loss/D": d_loss.detach(), "loss/G": g_loss.detach(),
        "D/real": torch.sigmoid(real_logits.detach().float()).mean(),
        "D/fake": torch.sigmoid(fake_logits.detach().float()).mean(),
    })
    finite = torch.isfinite(d_loss) & torch.isfinite(g_loss) & penalty_finite
    return {name: value for name, value in stats.items() if value is not None}, finite


def with_instance_noise(x: torch.Tensor, std: float) -> torch.Tensor:
    """Instance noise on everything D sees (Sonderby et al. 2017)."""
    return x + std * torch.randn_like(x) if std > 0 else x


def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
           module: torch.nn.Module, measure: bool) -> torch.Tensor | None:
    """Backward and an optimizer step through fp16's loss scaler (a no-op scaler otherwise).
    Returns the unscaled gradient norm where `measure`, else None."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    norm = None
    if measure:
        scaler.unscale_(optimizer)
        norm = grad_norm(module)
    scaler.step(optimizer)
    scaler.update()
    return norm


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
    record: RunRecord  # status.json: the run's state and measurements
    data: object
    gan: GAN
    losses: Losses
    evaluator: Evaluator
    scalers: tuple  # fp16's loss scalers for G and D (disabled otherwise)
    autocast: Callable
    loggers: Loggers  # TensorBoard, and what else conf/logger chose
    reference_points: torch.Tensor | None  # real 2D points under the generated ones in a scatter
    progress: Progress
    noise_horizon: int  # fixed at the first start: raising trainer.steps on resume keeps it
    last_scalars: dict  # the last logged scalars, at `last_scalars_step`
    last_scalars_step: int

    @property
    def generators(self) -> dict[str, torch.nn.Module]:
        """The generators whose samples and metrics are logged, by tag suffix."""
        ema = {"_ema": self.gan.ema.module} if self.gan.ema is not None else {}
        return {"": self.gan.generator, **ema}


@dataclass
class Prepared:
    """What a start builds before it is accepted: building it checks the input."""

    progress: Progress
    data: object
    gan: GAN
    losses: Losses
    objective: str  # the metric the run returns, eval.objective resolved for this data


def prepare(cfg: DictConfig, device: torch.device, show_progress: bool, data=None) -> Prepared:
    """Seed, load the data (unless given `data`, loaded and checked already: a fused group's),
    build G, D and the losses. Bad input (a missing file, a size the model cannot take, a pack
    that does not divide the batch, BatchNorm over one example, a streamed set smaller than a
    batch, a weight without a penalty, an objective the run does not measure) raises UserError
    here, before the start writes anything."""
    progress = Progress(show_progress)
    seed_everything(cfg.seed)
    use_deterministic_kernels(cfg.trainer.deterministic)
    if data is None:
        with progress.phase(f"Loading data ({cfg.data._target_.rsplit('.', 1)[-1]})"):
            data = build(cfg.data, device=device)
        check_batch_size(data, cfg.trainer.batch_size)
        check_cache_dir(cfg.eval, data)
    return Prepared(progress, data, build_gan(cfg, data, device), make_losses(cfg),
                    resolve_objective(cfg.eval, data))


def set_up(cfg: DictConfig, run_dir: Path, device: torch.device, prepared: Prepared,
           resumed_from: TrainingState | None, record: RunRecord, loggers: Loggers,
           hparams: HParams | None) -> Session:
    """The session of a fresh run, or of one resumed from a checkpoint exactly where it was."""
    data, gan, trainer = prepared.data, prepared.gan, cfg.trainer
    reference_points = None if data.is_image else data.sample(
        trainer.num_samples * POINTS_PER_IMAGE, generator=torch.Generator(device).manual_seed(cfg.seed))
    fp16 = trainer.precision == "fp16"
    scalers = (torch.amp.GradScaler(device.type, enabled=fp16), torch.amp.GradScaler(device.type, enabled=fp16))
    if resumed_from is not None:
        resume(gan, scalers, resumed_from, record, device)
        log.info("Resumed %s at step %d.", run_dir, gan.step)
    evaluator = Evaluator(cfg.eval, data, cfg.model.latent_dim, device, cfg.seed, prepared.progress)
    autocast = _autocast_factory(device, str(trainer.precision))
    maybe_compile(gan, prepared.losses, autocast, cfg, device)
    session = Session(
        cfg, run_dir, record, data, gan, prepared.losses, evaluator, scalers, autocast, loggers,
        reference_points, prepared.progress,
        noise_horizon=resumed_from.noise_horizon if resumed_from else trainer.instance_noise_steps or trainer.steps,
        last_scalars=resumed_from.last_scalars if resumed_from else {},
        last_scalars_step=resumed_from.last_scalars_step if resumed_from else 0,
    )
    metric_tags = [tag(name, suffix) for suffix in session.generators for name in evaluator.names]
    final_losses = [tag(name) for name in FINAL_LOSSES]
    loggers.config(hparams or HParams(checkpoint.flatten(resolved(cfg))), final_losses + metric_tags)
    return session


def resume(gan: GAN, scalers: tuple, saved: TrainingState, record: RunRecord, device: torch.device) -> None:
    """Everything training changed, back as the checkpoint saved it; the record keeps the
    measurements so far, and says so where the arithmetic changed (no longer bit-exact)."""
    gan.load_state_dict(saved.gan)
    for scaler, state in zip(scalers, saved.scalers, strict=True):
        scaler.load_state_dict(state)  # fp16 resumes with the loss scale it had reached
    checkpoint.set_rng_state(saved.rng, device)
    record.metrics = measurements(saved.metrics)
    changes = checkpoint.arithmetic_changes(saved.arithmetic, record.arithmetic)
    if changes:
        record.resumed_on_other_arithmetic = [*(record.resumed_on_other_arithmetic or []), *changes]
        log.warning("Resumed on other arithmetic (%s): the run continues as the same experiment, "
                    "but is no longer bit-exact with an uninterrupted one.", "; ".join(changes))


def save_checkpoint(s: Session, rng: dict | None = None) -> None:
    """The session's checkpoint; `rng`: the run's random streams (checkpoint.rng_state layout)
    where they are not the process's (a member of a fused group)."""
    TrainingState(
        gan=s.gan.state_dict(), rng=rng or checkpoint.rng_state(s.gan.device), config=resolved(s.cfg),
        data_shape=s.data.shape, is_image=s.data.is_image,
        scalers=[scaler.state_dict() for scaler in s.scalers], noise_horizon=s.noise_horizon,
        last_scalars=s.last_scalars, last_scalars_step=s.last_scalars_step,
        metrics=measurements_json(s.record.metrics),
        arithmetic=s.record.arithmetic,  # this leg's, as its record states it
    ).save(RunPaths(s.run_dir).checkpoint)


def log_scalars(s: Session, stats: dict, noise_std: float) -> None:
    s.last_scalars = {k: v.item() for k, v in stats.items()}
    s.last_scalars.update({"lr/G": s.gan.opt_g.param_groups[0]["lr"], "lr/D": s.gan.opt_d.param_groups[0]["lr"]})
    if noise_std > 0:
        s.last_scalars["instance_noise/std"] = noise_std
    s.last_scalars_step = s.gan.step
    s.loggers.scalars(s.last_scalars, s.gan.step)


def sample_now(s: Session) -> None:
    for suffix, g in s.generators.items():
        grid_tag = f"samples{suffix}"
        was_training = g.training
        g.eval()
        with torch.no_grad():
            fake = g(s.gan.fixed_noise)
        g.train(was_training)
        png = RunPaths(s.run_dir).sample(s.gan.step, grid_tag)
        s.loggers.image(grid_tag, render_samples(fake, s.reference_points, s.gan.step, png), png, s.gan.step)


def evaluate_now(s: Session) -> None:
    for suffix, g in s.generators.items():
        values = s.evaluator(g)
        for name, value in values.items():
            s.record.metrics[tag(name, suffix)] = Measurement(value, s.gan.step, s.evaluator.methods[name])
        s.loggers.scalars({tag(name, suffix): value for name, value in values.items()}, s.gan.step)


def run_loop(s: Session, stop: threading.Event) -> str:
    """Train up to trainer.steps, or until `stop` is set. Returns how the loop ended:
    ok | diverged | interrupted."""
    cfg, trainer, gan = s.cfg, s.cfg.trainer, s.gan
    nonfinite = torch.zeros((), dtype=torch.bool, device=gan.fixed_noise.device)
    bar = s.progress.bar("Training", trainer.steps, initial=gan.step)
    outcome = "ok"
    while gan.step < trainer.steps:
        noise_std = instance_noise_std(gan.step, trainer.instance_noise, s.noise_horizon)
        measure = (gan.step + 1) % trainer.log_every == 0 or gan.step + 1 == trainer.steps
        stats, finite = train_step(gan, s.data, s.losses, trainer, noise_std, s.scalers, s.autocast, measure)
        nonfinite |= ~finite  # read only when logging, so the step never syncs
        s.record.running(gan.step)
        bar.update(1)
        at_checkpoint = gan.step % trainer.checkpoint_every == 0 or gan.step == trainer.steps
        if (measure or at_checkpoint or stop.is_set()) and nonfinite.item():
            log.error("Non-finite loss by step %d: stopping; the last good checkpoint is kept.", gan.step)
            outcome = "diverged"
            break
        if measure:
            log_scalars(s, stats, noise_std)
            last = s.last_scalars
            bar.set_postfix(D=f"{last['loss/D']:.3f}", G=f"{last['loss/G']:.3f}",
                            Dx=f"{last['D/real']:.2f}", DGz=f"{last['D/fake']:.2f}")
        if gan.step % trainer.sample_every == 0 or gan.step == trainer.steps:
            sample_now(s)
        if s.evaluator.enabled and (gan.step == trainer.steps or cfg.eval.every and gan.step % cfg.eval.every == 0):
            bar.set_description_str("Evaluating")
            evaluate_now(s)
            bar.set_description_str("Training")
        stopping = stop.is_set()  # read once: a signal after the save must not end the loop without one
        if at_checkpoint or stopping:
            # First: a kill during the save leaves them ahead of the older checkpoint, which a
            # resume handles; behind it, the points in between would be lost.
            s.loggers.flush()  # MLflow and W&B are sent what the checkpoint covers
            save_checkpoint(s)
            s.record.write(s.run_dir)
        if stopping and gan.step < trainer.steps:
            log.warning("Stop requested: checkpoint written at step %d.", gan.step)
            outcome = "interrupted"
            break
    bar.close()
    return outcome


def finish(s: Session, outcome: str, stopped_by: str = "") -> RunRecord:
    """Write the run's record at its end: each metric with the step it was measured at, and its
    status. `stopped_by`: the signal seen, if any; the record keeps it for an interrupted run."""
    step = s.gan.step
    evaluated = any(m.step == step for name, m in s.record.metrics.items() if name.startswith("metrics"))
    if outcome == "ok" and s.evaluator.enabled and not evaluated:
        evaluate_now(s)  # resumed from a checkpoint written at the last step, before its evaluation
    if outcome == "ok" and s.last_scalars:
        for name, scalar in FINAL_LOSSES.items():
            s.record.metrics[tag(name)] = Measurement(s.last_scalars[scalar], s.last_scalars_step)
        s.loggers.scalars({tag(name): s.last_scalars[scalar] for name, scalar in FINAL_LOSSES.items()}, step)
    s.loggers.close(outcome)
    s.record.end(outcome, step, stopped_by)
    s.record.write(s.run_dir)
    return s.record


def resolved(cfg: DictConfig) -> dict:
    """The config as plain values: what a checkpoint records and a start is compared by."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def train(cfg: DictConfig, run_dir: Path, device: torch.device, prepared: Prepared,
          resumed_from: TrainingState | None, record: RunRecord, stop: StopRequest,
          loggers: Loggers, hparams: HParams | None = None) -> RunRecord:
    """Set up from what the accepted start built (resuming from a checkpoint where there is
    one), train up to trainer.steps or a stop, and finish; returns the run's record at its end.
    `gan_experiments.run` decides the start and handles a failure."""
    session = set_up(cfg, Path(run_dir), device, prepared, resumed_from, record, loggers, hparams)
    stop.setting_up = False
    try:
        return finish(session, run_loop(session, stop), stop.signal_name)
    finally:
        loggers.close("failed")  # after a crash (a no-op after finish): the events so far stay readable
