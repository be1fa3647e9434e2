"""The mode-coverage protocol of PacGAN (Lin et al. 2018) for mixtures of Gaussians."""

import math

import torch

from gan_experiments.metrics.features import ChunkedMetric


def mode_metrics(samples: torch.Tensor, centers: torch.Tensor, std: float) -> dict[str, float]:
    """Assign each sample to its nearest mode; it is high quality if within 3 std of it.

    modes:      modes with at least one high-quality sample
    hq:         fraction of high-quality samples
    reverse_kl: KL(histogram of high-quality samples over modes || uniform); 0 when the modes
                are covered evenly, log(K) when all mass sits on one mode (and, by convention,
                when there is no high-quality sample at all).
    """
    distances = torch.cdist(samples.float(), centers.float())
    nearest, mode = distances.min(dim=1)
    good = nearest <= 3 * std
    counts = torch.bincount(mode[good], minlength=len(centers)).double()
    k = len(centers)
    if counts.sum() == 0:
        reverse_kl = math.log(k)
    else:
        p = counts / counts.sum()
        p = p[p > 0]
        reverse_kl = float((p * (p * k).log()).sum())
    return {"modes": int((counts > 0).sum()), "hq": float(good.double().mean()), "reverse_kl": reverse_kl}


class ModeMetrics(ChunkedMetric):
    """`mode_metrics` over generated 2D points (N, 2) fed in chunks; the points are small, so
    they are gathered on the CPU and measured at once."""

    def __init__(self, centers: torch.Tensor, std: float):
        self.centers, self.std = centers.cpu(), std
        self.reset()

    def reset(self) -> None:
        self.samples: list[torch.Tensor] = []

    def update(self, fake: torch.Tensor) -> None:
        self.samples.append(fake.cpu())

    def compute(self) -> dict[str, float]:
        return mode_metrics(torch.cat(self.samples), self.centers, self.std)
