"""Mode coverage on Stacked MNIST, 1,000 modes, as PacGAN's code counts it (Lin et al. 2018,
Table 2; github.com/fjxmlzn/PacGAN, stacked_MNIST_experiments/*/model.py): each channel of a
generated image is classified by the digits' own classifier, and a mode is the triple
(d0, d1, d2)."""

import numpy as np
import scipy.stats
import torch

from gan_experiments.metrics.classifier import Classifier
from gan_experiments.metrics.features import ChunkedMetric, full_precision

MODES = 1000


class StackedModeMetrics(ChunkedMetric):
    """`stacked_modes`: the distinct (d0, d1, d2) among the generated images (N, 3, H, W), of
    1,000. `stacked_kl`: KL(generated mode histogram || uniform over the 1,000), nats, as
    PacGAN's code computes it (0 for a perfectly uniform generator; log 1000 = 6.9 for one
    mode). `classifier`: the one-channel digits' classifier, run on `device` (fp32, no TF32)."""

    def __init__(self, classifier: Classifier, device: torch.device):
        self.classifier, self.device = classifier.to(device), device
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(MODES, dtype=torch.long)

    def update(self, fake: torch.Tensor) -> None:
        channels = fake.flatten(0, 1)[:, None].to(self.device).float()  # (N * 3, 1, H, W)
        with full_precision():
            _, logits = self.classifier.features_and_logits(channels)
        digits = logits.argmax(1).view(-1, 3).cpu()
        self.counts += torch.bincount(digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2], minlength=MODES)

    def compute(self) -> dict[str, float]:
        histogram = (self.counts / self.counts.sum()).numpy()
        return {"stacked_modes": int((self.counts > 0).sum()),
                "stacked_kl": float(scipy.stats.entropy(histogram, np.full(MODES, 1 / MODES)))}
