"""Inception FID and KID through torchmetrics, only when the Inception weights are already on
disk: an offline machine gets one clear message and no metric, never a download that hangs."""

import logging
from pathlib import Path

import torch

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


class InceptionMetrics:
    """FID and KID of generated images against `real_images` (both in [-1, 1])."""

    def __init__(self, weights: Path, real_images: torch.Tensor, device: torch.device):
        from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
        from torchmetrics.image.kid import KernelInceptionDistance

        extractor = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(weights))
        self.fid = FrechetInceptionDistance(feature=extractor, reset_real_features=False).to(device)
        self.kid_subset = min(1000, len(real_images))
        self.kid = KernelInceptionDistance(feature=extractor, reset_real_features=False,
                                           subset_size=self.kid_subset).to(device)
        self.device = device
        for batch in real_images.split(100):
            uint8 = as_rgb_uint8(batch.to(device))
            self.fid.update(uint8, real=True)
            self.kid.update(uint8, real=True)

    @torch.no_grad()
    def __call__(self, fake_images: torch.Tensor) -> dict[str, float]:
        self.fid.reset()  # keeps the real features (reset_real_features=False)
        self.kid.reset()
        for batch in fake_images.split(100):
            uint8 = as_rgb_uint8(batch.to(self.device))
            self.fid.update(uint8, real=False)
            self.kid.update(uint8, real=False)
        kid_mean, _ = self.kid.compute()
        return {"fid_inception": float(self.fid.compute()), "kid_inception": float(kid_mean)}


def as_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    images = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
