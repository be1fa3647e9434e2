"""Inception FID and KID through torchmetrics, only when the Inception weights are already on
disk: an offline machine gets one clear message and no metric, never a download that hangs."""

import logging
from pathlib import Path

import torch

from gan_experiments.metrics import registry
from gan_experiments.metrics.features import ChunkedMetric, full_precision
from gan_experiments.metrics.manifold import precision_recall_density_coverage

log = logging.getLogger(__name__)
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"


def default_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_URL.rsplit("/", 1)[1]


def unavailable_reason(weights: Path) -> str | None:
    try:
        import torchmetrics.image.fid  # noqa: F401
    except ImportError:
        return "torchmetrics is not installed (pip install -e '.[inception]')"
    if not weights.is_file():
        return (f"the Inception weights are not at {weights}; on a machine with internet download "
                f"{WEIGHTS_URL} to that path (or set eval.inception_weights)")
    return None


class PrecomputedFeatures(torch.nn.Module):
    """The "feature extractor" handed to torchmetrics' FID and KID: the features are already
    computed, once per image, by the one Inception network."""

    num_features = 2048

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class InceptionMetrics(ChunkedMetric):
    """`fid_inception` (Heusel et al. 2017), `kid_inception` (Bińkowski et al. 2018, mean over
    subsets of up to 1,000) and precision, recall, density and coverage (metrics/manifold.py,
    `<name>_inception`) of generated images against the real ones, both in [-1, 1]
    (N, C, H, W), through torchmetrics. Inception-v3's pool3 features are computed once per
    image on `device` (fp32, no TF32) and shared by both metrics. `real_chunks`: the real images
    in chunks."""

    BATCH = 100  # Inception's input is 299x299: 100 images of it at a time

    def __init__(self, weights: Path, real_chunks, device: torch.device):
        from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
        from torchmetrics.image.kid import KernelInceptionDistance

        self.device = device
        self.extractor = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(weights)).to(device)
        real = [self._features(chunk) for chunk in real_chunks]
        n_real = sum(len(f) for f in real)
        self.fid = FrechetInceptionDistance(feature=PrecomputedFeatures(), reset_real_features=False).to(device)
        self.kid = KernelInceptionDistance(feature=PrecomputedFeatures(), reset_real_features=False,
                                           subset_size=min(1000, n_real)).to(device)
        for features in real:
            self.fid.update(features, real=True)
            self.kid.update(features, real=True)
        self.real_features = torch.cat(real).cpu()  # for the k-NN balls

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        with full_precision():
            return torch.cat([self.extractor(as_rgb_uint8(batch.to(self.device)))
                              for batch in images.split(self.BATCH)])

    def reset(self) -> None:
        self.fid.reset()  # keeps the real features (reset_real_features=False)
        self.kid.reset()
        self.fake_features: list[torch.Tensor] = []

    def update(self, fake: torch.Tensor) -> None:
        features = self._features(fake)
        self.fid.update(features, real=False)
        self.kid.update(features, real=False)
        self.fake_features.append(features.cpu())

    def compute(self) -> dict[str, float]:
        kid_mean, _ = self.kid.compute()
        manifold = precision_recall_density_coverage(self.real_features, torch.cat(self.fake_features),
                                                     registry.K_PRECISION_RECALL, registry.K_DENSITY_COVERAGE)
        return {"fid_inception": float(self.fid.compute()), "kid_inception": float(kid_mean),
                **{f"{name}_inception": value for name, value in manifold.items()}}


def as_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    images = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
