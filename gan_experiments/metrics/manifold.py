"""Quality and diversity apart, from k-nearest-neighbour balls around feature vectors.

Precision and recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric for
assessing generative models", eq. 1-2; k = 3 as the authors and torch-fidelity use): the share
of generated samples inside some real sample's k-NN ball, and of real samples inside some
generated sample's ball. Density and coverage (Naeem et al. 2020, "Reliable fidelity and
diversity metrics for generative models", eq. 3-4; k = 5): how many real balls hold each
generated sample, on average, divided by k; and the share of real balls that hold at least one
generated sample. As the authors' `prdc` package computes them: Euclidean distances, a ball's
radius the distance to its k-th nearest other sample, strict `<`.

Distances are taken a block of rows at a time, at most 2M distances (16 MB) at once, not N by
M: 10,000 × 10,000 samples would be 800 MB, 50,000 × 50,000 20 GB."""

import torch

BLOCK_ELEMENTS = 2**21  # distances held at once (16 MB in float64)


class _DistanceBlocks:
    """Euclidean distances from blocks of rows of `a` (N, D) to every row of `b` (M, D): (rows, M)
    at a time, each block written into one buffer held for the whole pass. A fresh (rows, M)
    tensor per block, freed while topk's and the comparisons' small results stay allocated,
    fragmented the C heap, by how much depending on the CPU kernels' own allocations: nearly
    every block's 16 MB stayed resident in a CI run (19 GB at 50,000 samples), and up to 3 GB at
    20,000 here under ATEN_CPU_CAPABILITY=default."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, block: int | None):
        self.a, self.b_t = a, b.T
        self.rows = block or max(1, BLOCK_ELEMENTS // len(b))
        self.b_norms = b.pow(2).sum(1).expand(min(self.rows, len(a)), len(b))
        self.buffer = a.new_empty(self.b_norms.shape)

    def __iter__(self):
        for start in range(0, len(self.a), self.rows):
            rows = self.a[start:start + self.rows]
            d = self.buffer[:len(rows)]
            # sqrt(|a|^2 - 2ab + |b|^2), as sklearn's euclidean_distances (which prdc uses); in
            # float64 its rounding is far below any gap that decides a comparison. (torch.cdist,
            # with topk on its output, grew the resident set by 1.7 GB over 400 blocks at
            # N = 20,000 here.)
            torch.addmm(self.b_norms[:len(rows)], rows, self.b_t, alpha=-2, out=d)
            yield start, d.add_(rows.pow(2).sum(1, keepdim=True)).clamp_min_(0).sqrt_()


def knn_radii(features: torch.Tensor, ks: tuple[int, ...], block: int | None = None) -> dict[int, torch.Tensor]:
    """For each k of `ks`: (N,) the distance from each row of `features` (N, D) to its k-th
    nearest other row. One pass over the distances for every k; `block` rows at a time."""
    nearest = features.new_empty(len(features), max(ks) + 1)  # column 0: the row itself
    indices = torch.empty(nearest.shape, dtype=torch.long, device=features.device)
    for start, d in _DistanceBlocks(features, features, block):
        torch.topk(d, max(ks) + 1, dim=1, largest=False, out=(nearest[start:start + len(d)],
                                                            indices[start:start + len(d)]))
    return {k: nearest[:, k] for k in ks}


def precision_recall_density_coverage(real: torch.Tensor, fake: torch.Tensor, k_pr: int = 3, k_dc: int = 5,
                                      block: int | None = None) -> dict[str, float]:
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
    blocks = _DistanceBlocks(fake, real, block)  # (rows, N): generated samples against every real one
    inside = torch.empty(blocks.buffer.shape, dtype=torch.bool, device=real.device)
    for start, d in blocks:
        mask, radius = inside[:len(d)], fake_pr[start:start + len(d), None]
        in_real_pr += torch.lt(d, real_pr, out=mask).any(dim=1).sum().item()
        in_real_dc += torch.lt(d, real_dc, out=mask).sum().item()
        in_fake |= torch.lt(d, radius, out=mask).any(dim=0)
        torch.minimum(nearest_fake, d.amin(dim=0), out=nearest_fake)
    return {"precision": in_real_pr / len(fake), "recall": in_fake.double().mean().item(),
            "density": in_real_dc / (k_dc * len(fake)), "coverage": (nearest_fake < real_dc).double().mean().item()}


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                    generator: torch.Generator | None = None) -> float:
    """KID (Bińkowski et al. 2018, "Demystifying MMD GANs", eq. 4 with the kernel of section
    4): the unbiased estimate of MMD² under k(x, y) = (x·y / D + 1)³, averaged over `subsets`
    random subsets of min(subset_size, N, M) samples of each set (drawn with `generator`), as
    torchmetrics' KernelInceptionDistance and the authors' code compute it. Unbiased, so runs
    measured at different sample counts are comparable, where FID is not. Subsets bound the
    memory (three m × m kernels) and time whatever N is. The kernels in float32, as torchmetrics
    takes them, their sums in float64."""
    real, fake = real.float(), fake.float()
    m = min(subset_size, len(real), len(fake))
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:m].to(real.device)]
        y = fake[torch.randperm(len(fake), generator=generator)[:m].to(fake.device)]
        values.append(_unbiased_mmd2(x, y))
    return float(torch.stack(values).mean())


def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d, m = x.shape[1], x.shape[0]

    def kernel_sum(a, b, without_diagonal):
        k = (a @ b.T / d + 1).pow_(3)
        return k.sum(dtype=torch.float64) - (k.diagonal().sum(dtype=torch.float64) if without_diagonal else 0)

    same = (kernel_sum(x, x, True) + kernel_sum(y, y, True)) / (m * (m - 1))
    return same - 2 * kernel_sum(x, y, False) / (m * m)
