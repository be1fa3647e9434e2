"""Chooses the metrics that fit the data and computes them for a generator."""

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from gan_experiments.errors import UserError
from gan_experiments.metrics import classifier, inception, registry
from gan_experiments.metrics.modes import mode_metrics
from gan_experiments.progress import Progress

log = logging.getLogger(__name__)


class Evaluator:
    def __init__(self, cfg: DictConfig, data, latent_dim: int, device: torch.device, seed: int,
                 progress: Progress | None = None):
        self.cfg, self.data, self.latent_dim, self.device = cfg, data, latent_dim, device
        self.seed, self.progress = seed, progress or Progress(False)
        self.metric_fns, self.names = [], []
        self.info: dict[str, float] = {}
        # How each metric is measured, stored beside every value it gives: two values are
        # comparable only where these agree (see report.py).
        self.measured: dict[str, dict] = {}
        # Building metric models draws random initial weights: keep that out of the run's RNG
        # stream, or a run would train differently depending on what the cache holds.
        with torch.random.fork_rng(devices=self._cuda()):
            self._setup(cfg, data, device)

    def _cuda(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _setup(self, cfg: DictConfig, data, device: torch.device) -> None:
        if not data.is_image:
            self.metric_fns.append(lambda fake: mode_metrics(fake, data.centers, data.std))
            self._add("modes", extractor="none (2D points against the mixture's modes)",
                      weights_sha256=None, real=f"{data.name}: {len(data.centers)} modes, std {data.std:g}")
            return
        real = self._real_images()
        # The subset follows the run's seed, so seeds share the protocol, not the images.
        real_split = f"{data.name}: {len(real)} of {len(data)} images, drawn with the run's seed"
        labels = getattr(data, "labels", None)
        if cfg.classifier and labels is not None and len(torch.unique(labels)) > 1:
            model, accuracy = classifier.load_or_train(data, Path(cfg.cache_dir), cfg.classifier_steps,
                                                       self.progress)
            self.info["classifier_accuracy"] = accuracy
            self.metric_fns.append(classifier.ClassifierMetrics(model, real, labels))
            self._add("classifier", extractor=f"classifier CNN trained on {data.name} "
                      f"({classifier.FEATURES} features)", weights_sha256=classifier.weights_sha256(model),
                      real=real_split)
        elif cfg.classifier:
            log.info("Classifier metrics skipped: %s has no class labels to train on.", data.name)
        if cfg.inception:
            weights = Path(cfg.inception_weights or inception.default_weights_path()).expanduser()
            reason = inception.unavailable_reason(weights)
            if reason:
                log.warning("Inception FID/KID skipped: %s.", reason)
            else:
                self.metric_fns.append(inception.InceptionMetrics(weights, real, device))
                self._add("inception", extractor="Inception-v3 pool3 (2048 features, torchmetrics)",
                          weights_sha256=classifier.file_sha256(weights), real=real_split)

    def _add(self, family: str, extractor: str, weights_sha256: str | None, real: str) -> None:
        """Registers a metric function's names and how they are measured."""
        how = {"extractor": extractor, "weights_sha256": weights_sha256,
               "generated": self.cfg.num_samples, "real": real}
        for name in registry.names(family):
            self.names.append(name)
            self.measured[name] = how

    def _real_images(self) -> torch.Tensor:
        from gan_experiments.data import to_signed_unit

        if hasattr(self.data, "images"):
            generator = torch.Generator().manual_seed(self.seed)
            index = torch.randperm(len(self.data), generator=generator)[: self.cfg.num_samples]
            return to_signed_unit(self.data.images[index.to(self.data.images.device)])
        batches, n = [], 0
        while n < self.cfg.num_samples:  # a streamed dataset: draw batches from its loader
            # Batches no larger than the data: a streamed set smaller than num_samples still
            # gives num_samples real images, drawn over several epochs.
            batches.append(self.data.sample(min(500, self.cfg.num_samples - n, len(self.data))))
            n += len(batches[-1])
        return torch.cat(batches)

    @property
    def enabled(self) -> bool:
        return bool(self.metric_fns)

    @torch.no_grad()
    def generate(self, generator: torch.nn.Module) -> torch.Tensor:
        """`num_samples` outputs from the same noise at every evaluation, drawn from a private
        RNG so that evaluating does not change the training run."""
        noise_rng = torch.Generator().manual_seed(self.seed + 1)
        z = torch.randn(self.cfg.num_samples, self.latent_dim, generator=noise_rng).to(self.device)
        was_training = generator.training
        generator.eval()
        fake = torch.cat([generator(chunk) for chunk in z.split(500)])
        generator.train(was_training)
        return fake

    def __call__(self, generator: torch.nn.Module) -> dict[str, float]:
        with torch.random.fork_rng(devices=self._cuda()):  # KID draws random subsets
            fake = self.generate(generator)
            results: dict[str, float] = {}
            for fn in self.metric_fns:
                results.update(fn(fake))
        return results

    def objective(self, name: str) -> str:
        """The metric a sweeper optimises: `auto` picks the headline metric for the data."""
        measured = self.names + registry.names("loss")
        if name == "auto":
            return registry.auto_objective(measured)
        if name not in measured:
            raise UserError(
                f"eval.objective={name} is not computed for this run; choose one of "
                f"{', '.join(measured)}, or auto."
            )
        return name
