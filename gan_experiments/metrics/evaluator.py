"""Chooses the metrics that fit the data and computes them for a generator."""

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig

from gan_experiments.data import StackedDigits
from gan_experiments.errors import UserError
from gan_experiments.lifecycle import check_writable
from gan_experiments.metrics import classifier, inception, registry
from gan_experiments.metrics.features import CHUNK
from gan_experiments.metrics.modes import ModeMetrics
from gan_experiments.metrics.stacked import MODES, StackedModeMetrics
from gan_experiments.progress import Progress

log = logging.getLogger(__name__)


def families(cfg: DictConfig, data) -> dict[str, str | None]:
    """Which metric functions fit the data and eval settings, without training anything: each
    family of the registry, with None where it is measured, else why not."""
    if not data.is_image:
        return {"modes": None}
    why_not_inception = inception.unavailable_reason(inception_weights(cfg)) if cfg.inception else "eval.inception=false"
    if isinstance(data, StackedDigits):  # classified channel by channel with the digits' classifier
        return {"stacked": None if cfg.classifier else "eval.classifier=false", "inception": why_not_inception}
    labels = getattr(data, "labels", None)
    if not cfg.classifier:
        why_not_classifier = "eval.classifier=false"
    elif labels is None or len(torch.unique(labels)) < 2:
        why_not_classifier = f"{data.name} has no class labels to train on"
    else:
        why_not_classifier = None
    return {"classifier": why_not_classifier, "inception": why_not_inception}


def labelled(data):
    """The labelled data set whose classifier the run's metrics use: the digits of stacked ones."""
    return data.digits if isinstance(data, StackedDigits) else data


def check_cache_dir(cfg: DictConfig, data) -> None:
    """Before the start: where the evaluation classifier must be trained, eval.cache_dir must be
    writable, or the trained classifier is lost at step 0 (raises StartRefused naming it)."""
    available = families(cfg, data)
    if None in (available.get("classifier", ""), available.get("stacked", "")):
        found, path = classifier.locate(labelled(data), Path(cfg.cache_dir), cfg.classifier_steps)
        if found is None:
            check_writable(path.parent, "eval.cache_dir")


def inception_weights(cfg: DictConfig) -> Path:
    return Path(cfg.inception_weights or inception.default_weights_path()).expanduser()


def resolve_objective(cfg: DictConfig, data) -> str:
    """The metric a run returns to Hydra (and so to a sweeper): eval.objective, or for `auto`
    the registry's headline metric among those the run measures. Raises UserError, naming the
    choices, for a metric the run does not measure."""
    measured = [name for family, why_not in families(cfg, data).items() if why_not is None
                for name in registry.names(family)] + registry.names("loss")
    if cfg.objective == "auto":
        return registry.auto_objective(measured)
    if cfg.objective not in measured:
        raise UserError(f"eval.objective={cfg.objective} is not measured by this run; choose one of "
                        f"{', '.join(measured)}, or auto.")
    return cfg.objective


class Evaluator:
    def __init__(self, cfg: DictConfig, data, latent_dim: int, device: torch.device, seed: int,
                 progress: Progress | None = None):
        self.cfg, self.data, self.latent_dim, self.device = cfg, data, latent_dim, device
        self.seed, self.progress = seed, progress or Progress(False)
        self.metric_fns, self.names = [], []
        # How each metric is measured, stored beside every value it gives: two values are
        # comparable only where these agree (see report.py).
        self.methods: dict[str, dict] = {}
        # Building metric models draws random initial weights: keep that out of the run's RNG
        # stream, or a run would train differently depending on what the cache holds.
        with torch.random.fork_rng(devices=self._cuda()):
            self._setup(cfg, data, device)

    def _cuda(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _setup(self, cfg: DictConfig, data, device: torch.device) -> None:
        available = families(cfg, data)
        if "modes" in available:
            self.metric_fns.append(ModeMetrics(data.centers, data.std))
            self._add("modes", extractor="none (2D points against the mixture's modes)",
                      weights_sha256=None, real=f"{data.name}: {len(data.centers)} modes, std {data.std:g}")
            return
        n_real = min(self.cfg.num_samples, len(data)) if hasattr(data, "images") else self.cfg.num_samples
        # The subset follows the run's seed, so seeds share the protocol, not the images.
        real_split = f"{data.name}: {n_real} of {len(data)} images, drawn with the run's seed"
        if available.get("stacked", "") is None:
            model, accuracy = classifier.load_or_train(data.digits, Path(cfg.cache_dir), cfg.classifier_steps,
                                                       self.progress)
            self.metric_fns.append(StackedModeMetrics(model, device))
            self._add("stacked", extractor=f"classifier CNN trained on {data.digits.name}, per channel "
                      f"(held-out accuracy {accuracy:.4f})", weights_sha256=classifier.weights_sha256(model),
                      real=f"{MODES} modes (d0, d1, d2), uniform")
        if available.get("classifier", "") is None:
            model, accuracy = classifier.load_or_train(data, Path(cfg.cache_dir), cfg.classifier_steps,
                                                       self.progress)
            self.metric_fns.append(classifier.ClassifierMetrics(model, self._real_chunks(), data.labels, device,
                                                                self.seed))
            self._add("classifier", extractor=f"classifier CNN trained on {data.name} "
                      f"({classifier.FEATURES} features, held-out accuracy {accuracy:.4f})",
                      weights_sha256=classifier.weights_sha256(model), real=real_split)
        elif cfg.classifier and "classifier" in available:
            log.info("Classifier metrics skipped: %s.", available["classifier"])
        if available["inception"] is None:
            weights = inception_weights(cfg)
            self.metric_fns.append(inception.InceptionMetrics(weights, self._real_chunks(), device))
            self._add("inception", extractor="Inception-v3 pool3 (2048 features, torchmetrics)",
                      weights_sha256=classifier.file_sha256(weights), real=real_split)
        elif cfg.inception:
            log.warning("Inception FID/KID skipped: %s.", available["inception"])

    def _add(self, family: str, extractor: str, weights_sha256: str | None, real: str) -> None:
        """Registers a metric function's names and how they are measured."""
        how = {"extractor": extractor, "weights_sha256": weights_sha256, "device": self.device.type,
               "generated": self.cfg.num_samples, "real": real}
        for name in registry.names(family):
            self.names.append(name)
            self.methods[name] = how | dict(registry.METRICS[name].settings)

    def _real_chunks(self) -> Iterator[torch.Tensor]:
        """`eval.num_samples` real images in [-1, 1], CHUNK at a time: a random subset drawn
        with the run's seed, or, from a streamed data set, batches from its loader."""
        from gan_experiments.data import to_signed_unit

        if hasattr(self.data, "images"):
            generator = torch.Generator().manual_seed(self.seed)
            index = torch.randperm(len(self.data), generator=generator)[: self.cfg.num_samples]
            for part in index.split(CHUNK):
                yield to_signed_unit(self.data.images[part.to(self.data.images.device)])
            return
        n = 0
        while n < self.cfg.num_samples:
            # Batches no larger than the data: a streamed set smaller than num_samples still
            # gives num_samples real images, drawn over several epochs.
            batch = self.data.sample(min(CHUNK, self.cfg.num_samples - n, len(self.data)))
            n += len(batch)
            yield batch

    @property
    def enabled(self) -> bool:
        return bool(self.metric_fns)

    @torch.no_grad()
    def generate(self, generator: torch.nn.Module) -> Iterator[torch.Tensor]:
        """`eval.num_samples` outputs, CHUNK at a time, from the same noise at every evaluation,
        drawn from a private RNG so that evaluating does not change the training run."""
        noise_rng = torch.Generator().manual_seed(self.seed + 1)
        z = torch.randn(self.cfg.num_samples, self.latent_dim, generator=noise_rng)
        was_training = generator.training
        generator.eval()
        try:
            for chunk in z.split(CHUNK):
                yield generator(chunk.to(self.device))
        finally:
            generator.train(was_training)

    def __call__(self, generator: torch.nn.Module) -> dict[str, float]:
        """Every metric of the run for `generator`; memory: one chunk of samples at a time."""
        with torch.random.fork_rng(devices=self._cuda()):  # KID draws random subsets
            for fn in self.metric_fns:
                fn.reset()
            for chunk in self.generate(generator):
                for fn in self.metric_fns:
                    fn.update(chunk)
            results: dict[str, float] = {}
            for fn in self.metric_fns:
                results.update(fn.compute())
        if results.keys() != set(self.names):  # the registry names what each function reports
            raise RuntimeError(f"the metric functions report {sorted(results)}, the registry "
                               f"{sorted(self.names)}: declare each metric in metrics/registry.py")
        return results
