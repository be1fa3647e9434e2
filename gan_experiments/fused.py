"""Seeds as a batch dimension: the runs of a sweep that differ only in `seed` train in one
process as one model (`stacked.StackedNet`), and each is still a run of its own.

Each member starts as its solo run would (the same checks, rerun decision, loggers and set-up,
so its initial weights are the solo run's) and then draws from a random stream of its own,
which starts where the solo run's would: its data order, its noise and its instance noise are
the solo run's. One step trains every member; a member whose losses turn non-finite ends
`diverged` and leaves the group, the others go on. At its sample, evaluation and checkpoint
steps each member's slice is written back into its own modules and optimizers
(`StackedNet.write_back`), so its grids, metrics, checkpoint (a solo checkpoint: the sampler,
a solo resume and the report read it as any other) and status.json are a solo run's, and its
record names the seeds it was trained with (`fused_with`).

What is not fused is refused in one paragraph (`refusals`): the stochastic or per-member parts
a stacked step does not reproduce yet."""

import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.func import vmap

from gan_experiments import checkpoint
from gan_experiments.data import ImageStreamData, check_batch_size
from gan_experiments.errors import UserError
from gan_experiments.lifecycle import Start, StartRefused, check_values, claim, decide_start
from gan_experiments.loggers import LoggedRun, Loggers, job_group, start_loggers
from gan_experiments.member_logs import per_member, writing_to
from gan_experiments.metrics.evaluator import check_cache_dir
from gan_experiments.record import RunRecord
from gan_experiments.run import Outcome, _failed, _stopped_before_training, failure
from gan_experiments.stacked import ELEMENTWISE, StackedNet
from gan_experiments.stop import StopNow, stop_requests, sweep_stopped
from gan_experiments.summaries import HParams
from gan_experiments.train import (
    Session,
    build,
    evaluate_now,
    finish,
    instance_noise_std,
    log_scalars,
    prepare,
    resolve_device,
    resolved,
    sample_now,
    save_checkpoint,
    seed_everything,
    set_up,
)

log = logging.getLogger(__name__)


def refusals(cfg: DictConfig) -> list[str]:
    """Why `cfg` cannot train fused, one clause per option (empty where it can)."""
    why = []
    if cfg.model.get("spectral_norm"):
        why.append("model.spectral_norm=true (its power iteration updates a vector in place per call)")
    if cfg.model.get("d_dropout", 0) > 0:
        why.append("model.d_dropout > 0 (dropout would draw from one stream for every member)")
    if cfg.loss.penalty._target_ is not None and cfg.loss.penalty.weight != 0:
        why.append("a gradient penalty (loss/penalty: its input gradient and WGAN-GP's mixing draws are per member)")
    if cfg.trainer.precision != "fp32":
        why.append(f"trainer.precision={cfg.trainer.precision} (fp16's loss scale is per run)")
    if cfg.trainer.ema_decay > 0:
        why.append("trainer.ema_decay > 0 (an EMA generator)")
    if cfg.trainer.compile:
        why.append("trainer.compile=true (torch.compile of vmap: pytorch/pytorch#109025)")
    for net in ("g", "d"):
        if cfg.optimizer[net]._target_ not in ELEMENTWISE:
            why.append(f"optimizer.{net}={cfg.optimizer[net]._target_} (only {', '.join(ELEMENTWISE)} "
                       f"update each weight on its own)")
    return why


def check_fusable(cfg: DictConfig) -> None:
    """Raises StartRefused with one paragraph where a fused sweep cannot train `cfg`."""
    why = refusals(cfg)
    if why:
        raise StartRefused(
            f"hydra/launcher=fused cannot train this config: {'; '.join(why)}. Run the sweep with "
            f"the parallel launcher (drop hydra/launcher=fused), which trains every option, or "
            f"change these settings.")


@dataclass
class Member:
    """A run of a fused group: what its folder gets as a solo run's would."""

    cfg: DictConfig
    run_dir: Path
    hparams: HParams | None = None
    on_start: Callable[[Start], None] = lambda start: None
    start: Start | None = None
    session: Session | None = None
    rng: dict = field(default_factory=dict)  # checkpoint.rng_state at the start of training
    generator: torch.Generator | None = None  # its training stream, on the device
    claim: object = None  # its folder's claim while the group trains (_claimed_start)


@dataclass
class Group:
    """The members that train now, with G and D stacked in the members' order."""

    members: list[Member]
    generator: StackedNet
    discriminator: StackedNet
    step: int
    mean_losses: bool = True  # the losses are batch means: summed_over_members holds

    def keep(self, indices: list[int]) -> "Group":
        return Group([self.members[i] for i in indices], self.generator.select(indices),
                     self.discriminator.select(indices), self.step, self.mean_losses)

    def write_back(self) -> None:
        for i, m in enumerate(self.members):
            gan = m.session.gan
            self.generator.write_back(i, gan.generator, gan.opt_g, gan.sched_g)
            self.discriminator.write_back(i, gan.discriminator, gan.opt_d, gan.sched_d)
            gan.step = self.step


def stack(members: list[Member]) -> Group:
    gans = [m.session.gan for m in members]
    cfg = members[0].cfg

    def net(module, opt, sched, name):
        return StackedNet.of([getattr(g, module) for g in gans], [getattr(g, opt) for g in gans],
                             [getattr(g, sched) for g in gans], instantiate(cfg.optimizer[name]),
                             lambda optimizer: instantiate(cfg.schedule[name])(optimizer))

    session = members[0].session
    return Group(members, net("generator", "opt_g", "sched_g", "g"), net("discriminator", "opt_d", "sched_d", "d"),
                 gans[0].step, check_losses(session.losses, len(members), session.gan.device))


def noise(generators: list[torch.Generator], shape: tuple, device) -> torch.Tensor:
    """(N, *shape): a standard normal draw from each member's own stream."""
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])


def summed_over_members(loss: Callable, *logits: torch.Tensor) -> torch.Tensor:
    """The sum over members of `loss` on each member's (N, B) logits, as one call on all of
    them: our losses are means over a batch, and members' batches are equal, so the sum is N
    times the loss of the flattened logits (`check_losses` verifies it for the run's losses).
    Its gradient is each member's own loss's, without vmap's extra backward calls."""
    return logits[0].shape[0] * loss(*(x.reshape(-1) for x in logits))


def check_losses(losses, n: int, device) -> bool:
    """Whether `summed_over_members` is the sum of the members' losses for the run's loss
    functions (a loss that is no mean over the batch would be summed with vmap instead)."""
    probe = torch.Generator().manual_seed(0)
    real, fake = (torch.randn(n, 6, generator=probe).to(device) * 3 for _ in range(2))
    return all(torch.allclose(summed_over_members(fn, *args), vmap(fn)(*args).sum(), rtol=1e-5, atol=1e-6)
               for fn, args in ((losses.discriminator, (real, fake)), (losses.generator, (fake,))))


def fused_step(group: Group, generators: list[torch.Generator], data, losses, trainer: DictConfig,
               latent_dim: int, noise_std: float, measure: bool) -> tuple[dict, torch.Tensor]:
    """train.train_step for every member at once: `trainer.d_steps` D updates, then one G
    update. Each member draws its batch and noise from its own stream in the solo step's order
    (batch, its instance noise, G's noise, the fakes' instance noise), so its first step is its
    solo run's. Returns the statistics as (N,) tensors (the losses and D's outputs where
    `measure`), whether every member's losses were finite (a scalar), and (N,) whether each
    member's logits were: nothing here waits for the device."""
    G, D, batch = group.generator, group.discriminator, trainer.batch_size
    stats = {}

    def total(loss, *logits):  # what backward runs through: the members' losses, summed
        return summed_over_members(loss, *logits) if group.mean_losses else vmap(loss)(*logits).sum()

    for d_step in range(trainer.d_steps):
        real = data.sample_each(batch, generators)
        device = real.device
        if noise_std > 0:
            real = real + noise_std * noise(generators, tuple(real.shape[1:]), device)
        z = noise(generators, (batch, latent_dim), device)
        fake_noise = noise(generators, tuple(real.shape[1:]), device) if noise_std > 0 else None
        with torch.set_grad_enabled(d_step == trainer.d_steps - 1):
            fake = G(z)
        fake_seen = fake.detach() + noise_std * fake_noise if noise_std > 0 else fake.detach()
        real_logits, fake_logits = D(real), D(fake_seen)
        d_total = total(losses.discriminator, real_logits, fake_logits)
        stats["grad_norm/D"] = D.step(d_total, measure)
    if noise_std > 0:
        fake = fake + noise_std * noise(generators, tuple(fake.shape[1:]), device)
    fake_logits_g = D(fake, frozen=True)
    g_total = total(losses.generator, fake_logits_g)
    stats["grad_norm/G"] = G.step(g_total, measure)
    G.schedule.step()
    D.schedule.step()
    group.step += 1
    if measure:  # each member's own values, for its curves: computed only when logged
        with torch.no_grad():
            stats.update({
                "loss/D": vmap(losses.discriminator)(real_logits.detach(), fake_logits.detach()),
                "loss/G": vmap(losses.generator)(fake_logits_g.detach()),
                "D/real": torch.sigmoid(real_logits.detach()).flatten(1).mean(1),
                "D/fake": torch.sigmoid(fake_logits.detach()).flatten(1).mean(1),
            })
    # One flag for the group, as a solo step's: the sum is finite when every member's loss is;
    # and which members' logits were not finite, to tell who diverged at the next check.
    finite = torch.isfinite(d_total.detach()) & torch.isfinite(g_total.detach())
    logits = torch.cat([real_logits.detach(), fake_logits.detach(), fake_logits_g.detach()], dim=1)
    return {name: value for name, value in stats.items() if value is not None}, finite, torch.isfinite(logits).all(dim=1)


def diverged_members(group: Group, stats: dict) -> torch.Tensor:
    """(N,) which members diverged, once the group's losses were non-finite: a member whose
    weights are no longer finite, or whose losses at this (logged) step are not (run_loop adds
    the members whose logits were not finite at any step since the last check)."""
    bad = torch.zeros(group.generator.members, dtype=torch.bool, device=next(iter(group.generator.params.values())).device)
    for net in (group.generator, group.discriminator):
        for p in net.params.values():
            bad |= ~torch.isfinite(p.detach().flatten(1)).all(dim=1)
    for name in ("loss/D", "loss/G"):
        if name in stats:
            bad |= ~torch.isfinite(stats[name])
    return bad


def member_rng(m: Member, device: torch.device) -> dict:
    """The member's streams as checkpoint.rng_state lays them out: its training stream is the
    one a solo run draws from on this device."""
    return {**m.rng, ("cuda" if device.type == "cuda" else "torch"): m.generator.get_state()}


def load_data(cfg: DictConfig, device: torch.device):
    """The group's data, loaded once. Raises UserError where it is streamed (its batches come
    from a loader, not from a member's stream)."""
    seed_everything(cfg.seed)
    before = torch.get_rng_state()
    data = build(cfg.data, device=device)
    if not torch.equal(before, torch.get_rng_state()):
        raise RuntimeError(f"loading {cfg.data._target_} draws from torch's RNG: the members' streams "
                           f"would not be their solo runs'")
    if isinstance(data, ImageStreamData):
        raise UserError(f"hydra/launcher=fused cannot train on {data.name}: it is streamed from disk "
                        f"(larger than data.max_in_memory_mb), and a fused group draws each member's batches "
                        f"from the member's own stream. Raise data.max_in_memory_mb, or drop hydra/launcher=fused.")
    check_batch_size(data, cfg.trainer.batch_size)
    check_cache_dir(cfg.eval, data)
    return data


def run_group(members: list[Member], sweep_dir: Path) -> list[Outcome]:
    """Start every member as `run.run` starts a sweep's job (refused, skipped or not started
    members drop out), train the started ones fused, and return each member's Outcome in order."""
    outcomes: dict[int, Outcome] = {}
    with ExitStack() as held:
        started = []
        for i, m in enumerate(members):
            if sweep_stopped(sweep_dir):
                outcomes[i] = Outcome("not_started", message="the sweep was stopped")
                continue
            try:
                with writing_to([m.run_dir]):
                    check_values(m.cfg)
                    check_fusable(m.cfg)
                    m.claim = held.enter_context(_claimed_start(m.run_dir, resolved(m.cfg)))
                    m.start = m.claim.start
            except StartRefused as error:
                outcomes[i] = Outcome("refused", message=str(error))
                continue
            if m.start.kind == "skip":
                outcomes[i] = Outcome("skipped", m.start.record)
            else:
                started.append(i)
        # Members resumed from different steps cannot share a step: each step is a group.
        for step in sorted({members[i].start.step for i in started}):
            indices = [i for i in started if members[i].start.step == step]
            if sweep_stopped(sweep_dir):  # an earlier group was stopped: the sweep is
                outcomes.update({i: Outcome("not_started", message="the sweep was stopped") for i in indices})
                continue
            with writing_to([members[i].run_dir for i in indices]):  # the group's lines: each member's log
                outcomes.update(zip(indices, _train([members[i] for i in indices], sweep_dir), strict=True))
    return [outcomes[i] for i in range(len(members))]


class _claimed_start:
    """lifecycle.claim held for the group's training, with the member's rerun decision. A start
    refused here, or later while the group sets up (`refused`), cleans up as claim does: the
    lock file, and the folder where the claim made it."""

    def __init__(self, run_dir: Path, config: dict):
        self.claim, self.run_dir, self.config = claim(run_dir), run_dir, config
        self.refused: StartRefused | None = None

    def __enter__(self) -> "_claimed_start":
        self.claim.__enter__()
        try:
            self.start = decide_start(self.run_dir, self.config, rerun=True)
        except StartRefused as error:
            self._refuse(error)
            raise
        return self

    def __exit__(self, *exc):
        if self.refused is not None:
            self._refuse(self.refused)
        else:
            self.claim.__exit__(None, None, None)

    def _refuse(self, error: StartRefused) -> None:
        try:
            self.claim.__exit__(StartRefused, error, error.__traceback__)
        except StartRefused:
            pass


def _stopped_at_once(record: RunRecord, error: StopNow, run_dir: Path) -> Outcome:
    """A second signal while training: as run._start records it for a solo run."""
    return Outcome("stopped_at_once", _failed(record, error, run_dir), message=(
        f"Stopped at once by {error}, without a new checkpoint. Run the same sweep command again to "
        f"resume from the last checkpoint."), error=error)


def _train(members: list[Member], sweep_dir: Path) -> list[Outcome]:
    cfg = members[0].cfg
    seeds = [int(m.cfg.seed) for m in members]
    outcomes: list[Outcome | None] = [None] * len(members)
    records: list[RunRecord | None] = [None] * len(members)
    loggers: list[Loggers] = [Loggers([]) for _ in members]
    index = {id(m): i for i, m in enumerate(members)}
    stop = None

    def finish_member(m: Member, ended: str, stopped_by: str) -> None:
        """A member's end, written when it ends: a member that diverged is final even if the
        group fails later; one member's failure to finish is its own."""
        i = index[id(m)]
        with writing_to([m.run_dir]):
            try:
                outcomes[i] = Outcome("trained", finish(m.session, ended, stopped_by))
            except Exception as error:
                log.error("%s failed at its end", m.run_dir.name, exc_info=error)
                outcomes[i] = failure(records[i], error, m.run_dir)

    try:
        device = resolve_device(cfg.trainer.device)
        with stop_requests(sweep_dir) as stop:
            try:
                data = load_data(cfg, device)
            except UserError as error:
                raise StartRefused(str(error)) from None
            for i, m in enumerate(members):
                with writing_to([m.run_dir]):  # its set-up and resume lines: its log
                    try:
                        prepared = prepare(m.cfg, device, False, data)
                        loggers[i] = start_loggers(m.cfg.logger, LoggedRun(
                            m.run_dir, m.run_dir.name, job_group(sweep_dir),
                            m.start.step if m.start.kind == "resume" else None))
                    except UserError as error:
                        raise StartRefused(str(error)) from None
                    m.on_start(m.start)
                    records[i] = RunRecord.begin(m.run_dir, m.cfg.trainer.steps, m.start.step, m.start.kind == "resume",
                                                 prepared.objective, checkpoint.arithmetic(device, len(members)))
                    records[i].fused_with = seeds
                    records[i].write(m.run_dir)
                    m.session = set_up(m.cfg, m.run_dir, device, prepared, m.start.saved, records[i], loggers[i], m.hparams)
                    # The solo run's stream starts here: set_up resumed it, or the seed and the
                    # model's init left it here.
                    m.rng = checkpoint.rng_state(device)
                    m.generator = torch.Generator(device)
                    m.generator.set_state(m.rng["cuda"] if device.type == "cuda" else m.rng["torch"])
            stop.setting_up = False
            run_loop(stack(members), stop, lambda m, ended: finish_member(m, ended, stop.signal_name))
    except StartRefused as error:  # a member's set-up refused: the group's configs differ only in seed
        for i, m in enumerate(members):
            if records[i] is None:
                outcomes[i] = Outcome("refused", message=str(error))
                m.claim.refused = error  # its folder is left as it was
            else:
                outcomes[i] = Outcome("failed", _failed(records[i], error, m.run_dir), str(error), error)
    except StopNow as error:
        for i, m in enumerate(members):
            if outcomes[i] is not None:
                continue
            if records[i] is None:
                outcomes[i] = Outcome("refused", message=f"Stopped by {error.signal_name or 'the sweep'} "
                                                         f"before the run started.")
                m.claim.refused = StartRefused(outcomes[i].message)
            elif stop is None or stop.setting_up:  # nothing trained in this leg: the folder's checkpoint stands
                outcomes[i] = Outcome("trained", _stopped_before_training(records[i], m.start.saved, error, m.run_dir))
            else:
                outcomes[i] = _stopped_at_once(records[i], error, m.run_dir)
    except Exception as error:
        log.error("Fused group failed", exc_info=error)
        for i, m in enumerate(members):
            if outcomes[i] is None:
                outcomes[i] = failure(records[i], error, m.run_dir)
    finally:
        for i, record in enumerate(records):
            loggers[i].close("interrupted" if record is not None and record.status == "interrupted" else "failed")
    return outcomes


def run_loop(group: Group, stop: threading.Event, finish_member: Callable[[Member, str], None]) -> None:
    """train.run_loop for a group. Each member is finished (`finish_member(member, how)`, how:
    ok | diverged | interrupted) when its training ends: a diverged one when it leaves the
    group, the others at the group's end."""
    s0 = group.members[0].session
    cfg, trainer = s0.cfg, s0.cfg.trainer
    losses, data = s0.losses, s0.data
    latent_dim = int(cfg.model.latent_dim)
    device = s0.gan.device
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    bad_logits = torch.zeros(len(group.members), dtype=torch.bool, device=device)
    while group.step < trainer.steps:
        noise_std = instance_noise_std(group.step, trainer.instance_noise, s0.noise_horizon)
        measure = (group.step + 1) % trainer.log_every == 0 or group.step + 1 == trainer.steps
        stats, finite, logits_finite = fused_step(group, [m.generator for m in group.members], data, losses,
                                                  trainer, latent_dim, noise_std, measure)
        nonfinite |= ~finite  # read only at the checks, as a solo run's
        bad_logits |= ~logits_finite
        step = group.step
        for m in group.members:
            m.session.record.running(step)
        at_checkpoint = step % trainer.checkpoint_every == 0 or step == trainer.steps
        if (measure or at_checkpoint or stop.is_set()) and nonfinite.item():
            bad = (diverged_members(group, stats) | bad_logits).tolist()
            if not any(bad):  # the losses' mean overflowed with every member's logits and weights finite
                log.warning("A non-finite loss by step %d left every member's logits and weights finite; "
                            "training on.", step)
            for m, diverged in zip(group.members, bad, strict=True):
                if diverged:
                    with writing_to([m.run_dir]):
                        log.error("%s: non-finite loss by step %d: it leaves the fused group; its last good "
                                  "checkpoint is kept.", m.run_dir.name, step)
                    m.session.gan.step = step
                    finish_member(m, "diverged")
            if all(bad):
                return
            if any(bad):
                keep = [i for i, diverged in enumerate(bad) if not diverged]
                group = group.keep(keep)
                stats = {name: value[keep] for name, value in stats.items()}
            nonfinite = torch.zeros((), dtype=torch.bool, device=device)
            bad_logits = torch.zeros(len(group.members), dtype=torch.bool, device=device)
        if measure:
            for i, m in enumerate(group.members):
                m.session.gan.opt_g.param_groups[0]["lr"] = group.generator.optimizer.param_groups[0]["lr"]
                m.session.gan.opt_d.param_groups[0]["lr"] = group.discriminator.optimizer.param_groups[0]["lr"]
                m.session.gan.step = step
                log_scalars(m.session, {name: value[i] for name, value in stats.items()}, noise_std)
        sample = step % trainer.sample_every == 0 or step == trainer.steps
        evaluate = s0.evaluator.enabled and (step == trainer.steps or cfg.eval.every and step % cfg.eval.every == 0)
        # Read once: a signal during the members' sampling must not end the loop before every
        # member has its checkpoint at this step (it stops the next one, with checkpoints).
        stopping = stop.is_set()
        if sample or evaluate or at_checkpoint or stopping:
            group.write_back()
        for m in group.members:
            with writing_to([m.run_dir]):
                if sample:
                    sample_now(m.session)
                if evaluate:
                    evaluate_now(m.session)
                if at_checkpoint or stopping:
                    m.session.loggers.flush()
                    save_checkpoint(m.session, member_rng(m, device))
                    m.session.record.write(m.run_dir)
        if stopping and step < trainer.steps:
            log.warning("Stop requested: checkpoints written at step %d.", step)
            for m in group.members:
                finish_member(m, "interrupted")
            return
    for m in group.members:
        finish_member(m, "ok")


def group_key(overrides) -> tuple[str, ...]:
    """What a job's overrides say besides its seed: jobs with one key train as one group."""
    from gan_experiments.sweep import override_key

    return tuple(sorted(o for o in overrides if override_key(o) != "seed"))


def launch(launcher, job_overrides, initial_job_idx: int) -> list:
    """`hydra/launcher=fused`: the sweep's jobs, grouped by everything but their seed, each
    group trained fused in this process, one group after another. Returns the jobs' JobReturns
    in Hydra's order, as Hydra's basic launcher does (hydra.core.utils.run_job, job by job)."""
    from hydra.core.utils import configure_log, filter_overrides, setup_globals
    from omegaconf import open_dict

    from gan_experiments.stop import stop_sweep_on_signals
    from gan_experiments.sweep import quiet_console

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir)).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    configs = []
    for offset, overrides in enumerate(job_overrides):
        config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = initial_job_idx + offset
        configs.append(config)
    groups: dict[tuple, list[int]] = {}
    for i, overrides in enumerate(job_overrides):
        groups.setdefault(group_key(overrides), []).append(i)
    log.info("Fused launcher: %d jobs in %d groups (one per setting, its seeds fused)", len(configs), len(groups))
    stop_sweep_on_signals(sweep_dir)  # the jobs run in this process, as the basic launcher's
    returns = [None] * len(configs)
    for key, indices in groups.items():
        log.info("\tgroup of %d seeds: %s", len(indices), " ".join(filter_overrides(list(key))) or "(defaults)")
        jobs = [_job(launcher, configs[i], sweep_dir) for i in indices]
        configure_log(configs[indices[0]].hydra.job_logging, configs[indices[0]].hydra.verbose)
        quiet_console()
        with per_member([member.run_dir for member, _ in jobs]):
            outcomes = run_group([member for member, _ in jobs], sweep_dir)
            for i, (member, ret), outcome in zip(indices, jobs, outcomes, strict=True):
                with writing_to([member.run_dir]):
                    _report(outcome, ret, member, configs[i])
                returns[i] = ret
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return returns


def _job(launcher, config: DictConfig, sweep_dir: Path):
    """A job's Member and its JobReturn, set up as hydra.core.utils.run_job sets up a job."""
    import copy

    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobReturn
    from omegaconf import OmegaConf, open_dict, read_write

    from gan_experiments.__main__ import save_hydra_files
    from gan_experiments.summaries import run_hparams
    from gan_experiments.sweep import swept_keys

    HydraConfig.instance().set_config(config)
    run_dir = sweep_dir / str(OmegaConf.select(config, "hydra.sweep.subdir"))
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(config)
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    hydra_cfg = copy.deepcopy(config.hydra)
    ret = JobReturn(overrides=list(config.hydra.overrides.task), cfg=task_cfg, hydra_cfg=OmegaConf.create({"hydra": hydra_cfg}),
                    working_dir=str(Path.cwd()), task_name=str(config.hydra.job.name))
    name = f"[job {config.hydra.job.num}] {run_dir.name}"

    def on_start(start: Start) -> None:
        HydraConfig.instance().set_config(config)  # ${hydra:...} in the saved config resolves to this job's
        save_hydra_files(run_dir, task_cfg, hydra_cfg)
        print(f"{name}: {'resuming' if start.kind == 'resume' else 'started'} (fused)", flush=True)

    hparams = run_hparams(task_cfg, dict(hydra_cfg.runtime.choices), swept_keys(sweep_dir))
    return Member(task_cfg, run_dir, hparams, on_start), ret


def _report(outcome: Outcome, ret, member: Member, config: DictConfig) -> None:
    from hydra.core.utils import JobStatus

    from gan_experiments.__main__ import job_line

    if outcome.kind == "failed":
        log.error("Job failed", exc_info=outcome.error)
    print(job_line(outcome, f"[job {config.hydra.job.num}] {member.run_dir.name}", member.run_dir), flush=True)
    ret.return_value, ret.status = outcome.value, JobStatus.COMPLETED
