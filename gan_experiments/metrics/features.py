"""What the metric families share: samples reach a metric in chunks, its feature extractor runs
on the run's device at full fp32 precision, and only features are kept. So an evaluation's
memory is one chunk of images plus the features, whatever `eval.num_samples` is (50,000
128×128 RGB images would be 10 GB at once)."""

from contextlib import contextmanager

import torch

CHUNK = 500  # samples generated, and images featurised, at a time


@contextmanager
def full_precision():
    """TF32 off for cuDNN convolutions and CUDA matmuls (cuDNN's is on by default): features,
    and so FID, then do not depend on whether the GPU has TF32 cores. No effect on the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class ChunkedMetric:
    """A metric family over generated samples: `reset()`, then `update(chunk)` for each chunk
    of samples (N, ...) on the run's device, then `compute()` -> {metric name: value}. Called
    on a tensor of samples, it does all three."""

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, fake: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def __call__(self, fake: torch.Tensor) -> dict[str, float]:
        self.reset()
        for chunk in fake.split(CHUNK):
            self.update(chunk)
        return self.compute()

