"""Quality and diversity apart, from k-nearest-neighbour balls around feature vectors.

Precision and recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric for
assessing generative models", eq. 1-2; k = 3 as the authors and torch-fidelity use): the share
of generated samples inside some real sample's k-NN ball, and of real samples inside some
generated sample's ball. Density and coverage (Naeem et al. 2020, "Reliable fidelity and
diversity metrics for generative models", eq. 3-4; k = 5): how many real balls hold each
generated sample, on average, divided by k; and the share of real balls that hold at least one
generated sample. As the authors' `prdc` package computes them: Euclidean distances, a ball's
radius the distance to its k-th nearest other sample, strict `<`.

Distances are taken a block of rows at a time, so memory is one block by N, not N by M:
10,000 × 10,000 samples need 40 MB at a time, not 800 MB."""

import torch

BLOCK = 1024  # rows of a distance matrix held at once


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Through |a|^2 + |b|^2 - 2ab, as sklearn's euclidean_distances (which prdc uses); in float64
    # its rounding is far below any gap that decides a comparison.
    return torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist")


def knn_radii(features: torch.Tensor, ks: tuple[int, ...], block: int = BLOCK) -> dict[int, torch.Tensor]:
    """For each k of `ks`: (N,) the distance from each row of `features` (N, D) to its k-th
    nearest other row. One pass over the distances for every k."""
    nearest = torch.cat([_distances(rows, features).topk(max(ks) + 1, dim=1, largest=False).values
                         for rows in features.split(block)])  # column 0: the row itself
    return {k: nearest[:, k] for k in ks}


def precision_recall_density_coverage(real: torch.Tensor, fake: torch.Tensor, k_pr: int = 3, k_dc: int = 5,
                                      block: int = BLOCK) -> dict[str, float]:
    """`real` (N, D) and `fake` (M, D) features, compared in float64 on their device. Returns
    precision and recall at `k_pr`, density and coverage at `k_dc`, each in [0, 1] (density may
    exceed 1). Raises ValueError where a set has no more than k samples."""
    if min(len(real), len(fake)) <= max(k_pr, k_dc):
        raise ValueError(f"precision/recall/density/coverage need more than {max(k_pr, k_dc)} samples "
                         f"per set, got {len(real)} real and {len(fake)} generated")
    real, fake = real.double(), fake.double()
    real_radii, fake_pr = knn_radii(real, (k_pr, k_dc), block), knn_radii(fake, (k_pr,), block)[k_pr]
    real_pr, real_dc = real_radii[k_pr], real_radii[k_dc]
    in_real_pr = in_real_dc = 0
    in_fake = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    nearest_fake = torch.full((len(real),), torch.inf, dtype=real.dtype, device=real.device)
    for rows, radius in zip(fake.split(block), fake_pr.split(block), strict=True):
        d = _distances(rows, real)  # (block, N): these generated samples against every real one
        in_real_pr += (d < real_pr).any(dim=1).sum().item()
        in_real_dc += (d < real_dc).sum().item()
        in_fake |= (d < radius[:, None]).any(dim=0)
        nearest_fake = torch.minimum(nearest_fake, d.min(dim=0).values)
    return {"precision": in_real_pr / len(fake), "recall": in_fake.double().mean().item(),
            "density": in_real_dc / (k_dc * len(fake)), "coverage": (nearest_fake < real_dc).double().mean().item()}


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 1, subset_size: int | None = None,
                    generator: torch.Generator | None = None) -> float:
    """KID (Bińkowski et al. 2018, "Demystifying MMD GANs", eq. 4 with the kernel of section
    4): the unbiased estimate of MMD² under k(x, y) = (x·y / D + 1)³, averaged over `subsets`
    random subsets of min(subset_size, N, M) samples of each set (drawn with `generator`), as
    torchmetrics' KernelInceptionDistance and the authors' code compute it. Unbiased, so runs
    measured at different sample counts are comparable, where FID is not. The default, one
    subset of every sample (N = M), estimates the same quantity as torchmetrics' 100 subsets
    of 1,000, with less variance and no sampling, at 2,500 samples in a fraction of the time."""
    real, fake = real.double(), fake.double()
    m = min(subset_size or len(real), len(real), len(fake))
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:m].to(real.device)]
        y = fake[torch.randperm(len(fake), generator=generator)[:m].to(fake.device)]
        values.append(_unbiased_mmd2(x, y))
    return float(torch.stack(values).mean())


def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d, m = x.shape[1], x.shape[0]
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    same = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return same - 2 * k_xy.mean()
