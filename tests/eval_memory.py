"""Peak memory of one evaluation at `eval.num_samples` samples: prints the growth of the peak
resident set over the evaluator's set-up and one call, in MB. Run by test_gpu.py in a process
of its own (a process's peak only grows), twice: first with --prepare, which trains and caches
the evaluation classifier in CACHE_DIR, a one-off that is no part of an evaluation."""

import resource
import sys

import torch

from conftest import make_cfg
from gan_experiments.data import ImageTensorData
from gan_experiments.metrics.evaluator import Evaluator
from gan_experiments.train import build


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def main(num_samples: int, cache_dir: str, prepare: bool) -> None:
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_samples, 3, 32, 32), dtype=torch.uint8, generator=generator)
    data = ImageTensorData(images, torch.arange(num_samples) % 10, "random32")
    cfg = make_cfg("model=dcgan", "model.g_width=8", "model.d_width=8", "model.latent_dim=8",
                   f"eval.num_samples={num_samples}", "eval.classifier_steps=5", "eval.inception=false",
                   f"eval.cache_dir={cache_dir}")
    G, _ = build(cfg.model, data_shape=data.shape, is_image=True)
    with torch.no_grad():  # everything a first call allocates once, before the baseline
        G.eval()(torch.randn(2, 8))
    if prepare:
        Evaluator(cfg.eval, data, 8, torch.device("cpu"), seed=0)
        return
    before = peak_mb()
    evaluator = Evaluator(cfg.eval, data, 8, torch.device("cpu"), seed=0)
    assert evaluator(G)["class_coverage"] >= 1
    print(f"{peak_mb() - before:.0f}")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], "--prepare" in sys.argv)
