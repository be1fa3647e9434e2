"""A small CNN trained on the dataset's own labels, cached on disk. Its penultimate features
give an offline Fréchet distance (`fid_classifier`); its predictions give `class_coverage`
and `class_kl`. Unlike Inception FID it needs no download and fits datasets of any size."""

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gan_experiments.metrics import registry
from gan_experiments.metrics.features import ChunkedMetric, full_precision
from gan_experiments.metrics.frechet import frechet_distance
from gan_experiments.metrics.manifold import kernel_distance, precision_recall_density_coverage
from gan_experiments.progress import Progress

log = logging.getLogger(__name__)
FEATURES = 128


class Classifier(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(128, FEATURES), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, num_classes)

    def forward(self, x):
        return self.head(self.body(x))

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor, batch: int = 500):
        features = torch.cat([self.body(images[i:i + batch]) for i in range(0, len(images), batch)])
        return features, self.head(features)


def fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in (images, labels):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.cpu().contiguous().numpy())  # the buffer itself: no copy of the data
    return digest.hexdigest()[:16]


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, shapes and bytes): which weights
    measured a metric, however they were stored."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.cpu().contiguous().numpy())  # the buffer itself: no copy of the data
    return digest.hexdigest()


def train_classifier(images_uint8, labels, steps: int, seed: int = 0, progress: Progress | None = None):
    """Returns (classifier, held-out accuracy). 10% of the data is held out for the accuracy."""
    from gan_experiments.data import to_signed_unit

    progress = progress or Progress(False)
    with torch.random.fork_rng(devices=[]):  # leaves the training run's RNG stream alone
        torch.manual_seed(seed)
        x, y = to_signed_unit(images_uint8.cpu()), labels.cpu()
        order = torch.randperm(len(x))
        n_test = max(1, len(x) // 10)
        test, fit = order[:n_test], order[n_test:]
        model = Classifier(x.shape[1], int(y.max()) + 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        with progress.bar("Training the evaluation classifier (once; cached)", steps) as bar:
            for _ in range(steps):
                batch = fit[torch.randint(len(fit), (128,))]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
        model.eval()
        with torch.no_grad():
            accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    return model, accuracy


# Classifiers trained once by this project and shipped in the package, so the default run
# (data=mnist_5k) spends no minute training one: file name -> sha256 of the file. Each was made
# by `python -m gan_experiments.metrics.classifier mnist_5k` (train_classifier, seed 0).
SHIPPED_DIR = Path(__file__).parent / "weights"
SHIPPED = {
    "classifier-mnist_5k-ff1f5ed9743bb2fc-s1000.pt":
        "3b714ca58e9821dfe35821903a9990a5e5499d5d44dae7bcda39cc9f819185cf",
}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_path(key: str) -> Path | None:
    """The packaged weights for `key`, if the package ships them intact."""
    name = f"classifier-{key}.pt"
    path = SHIPPED_DIR / name
    if name not in SHIPPED or not path.is_file():
        return None
    if file_sha256(path) != SHIPPED[name]:
        log.warning("The shipped classifier %s does not match its sha256 (a damaged install?); "
                    "training one instead. Reinstalling the package restores it.", path)
        return None
    return path


def locate(data, cache_dir: Path, steps: int) -> tuple[Path | None, Path]:
    """Where the dataset's classifier is (shipped with the package, or cached; None where it must
    be trained), and where a trained one is cached."""
    key = f"{data.name}-{fingerprint(data.images, data.labels)}-s{steps}"
    path = Path(cache_dir).expanduser() / f"classifier-{key}.pt"
    return shipped_path(key) or (path if path.is_file() else None), path


def load_or_train(data, cache_dir: Path, steps: int, progress: Progress | None = None):
    """The dataset's classifier: shipped with the package, else from `cache_dir`, else trained
    and cached on first use. Returns (model in eval mode, held-out accuracy)."""
    found, path = locate(data, cache_dir, steps)
    if found is not None:
        saved = torch.load(found, map_location="cpu", weights_only=True)
        model = Classifier(saved["channels"], saved["num_classes"])
        model.load_state_dict(saved["state"])
        return model.eval(), saved["accuracy"]
    log.info("Training the evaluation classifier for %s (cached at %s).", data.name, path)
    model, accuracy = train_classifier(data.images, data.labels, steps, progress=progress)
    from gan_experiments.checkpoint import save

    save(path, {"state": model.state_dict(), "channels": data.shape[0],
                "num_classes": model.head.out_features, "accuracy": accuracy})
    log.info("Evaluation classifier: held-out accuracy %.3f.", accuracy)
    return model, accuracy


class ClassifierMetrics(ChunkedMetric):
    """Compares generated images with the real ones through the dataset's classifier, which runs
    on `device` (fp32, no TF32). `real_chunks`: the real images in [-1, 1], (N, C, H, W), in
    chunks; `real_labels` their classes; `seed` draws KID's subsets. On its 128-d features:
    `fid_classifier` (Fréchet distance, Heusel et al. 2017 eq. 6), `kid_classifier` (unbiased
    MMD², Bińkowski et al. 2018), `precision_classifier` / `recall_classifier` (Kynkäänniemi et
    al. 2019) and `density_classifier` / `coverage_classifier` (Naeem et al. 2020). On its
    predictions: `class_coverage` (classes predicted at least once), `class_kl` (KL of the
    predicted class histogram to the real one, nats) and `classifier_score` (exp E KL(p(y|x) ||
    p(y)), the Inception Score's formula, Salimans et al. 2016; 1 to the number of classes)."""

    def __init__(self, classifier: Classifier, real_chunks, real_labels: torch.Tensor, device: torch.device,
                 seed: int = 0):
        self.classifier, self.device, self.seed = classifier.to(device), device, seed
        self.real_features = torch.cat([self._features(chunk)[0] for chunk in real_chunks])
        counts = torch.bincount(real_labels.cpu(), minlength=classifier.head.out_features).double()
        self.real_histogram = counts / counts.sum()
        self.reset()

    def _features(self, images: torch.Tensor):
        with full_precision():
            features, logits = self.classifier.features_and_logits(images.to(self.device).float())
        return features.cpu(), logits.double().softmax(1).cpu()

    def reset(self) -> None:
        self.features: list[torch.Tensor] = []
        self.probabilities: list[torch.Tensor] = []

    def update(self, fake: torch.Tensor) -> None:
        features, probabilities = self._features(fake)
        self.features.append(features)
        self.probabilities.append(probabilities)

    def compute(self) -> dict[str, float]:
        fake, probabilities = torch.cat(self.features), torch.cat(self.probabilities)
        counts = torch.bincount(probabilities.argmax(1), minlength=len(self.real_histogram)).double()
        p, q = counts / counts.sum(), self.real_histogram
        present = p > 0
        # A class the real data lacks gets a floor probability, keeping the KL finite.
        class_kl = float((p[present] * (p[present] / q[present].clamp_min(1e-6)).log()).sum())
        manifold = precision_recall_density_coverage(self.real_features, fake, registry.K_PRECISION_RECALL,
                                                     registry.K_DENSITY_COVERAGE)
        kid = kernel_distance(self.real_features, fake, registry.KID_SUBSETS, registry.KID_SUBSET_SIZE,
                              torch.Generator().manual_seed(self.seed))
        return {
            "fid_classifier": frechet_distance(self.real_features, fake),
            "class_coverage": int(present.sum()),
            "class_kl": class_kl,
            **{f"{name}_classifier": value for name, value in manifold.items()},
            "kid_classifier": kid,
            "classifier_score": classifier_score(probabilities),
        }


def classifier_score(probabilities: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))) for class probabilities (N, classes): the Inception Score's
    formula (Salimans et al. 2016, section 4), here with one split, on the dataset's classifier."""
    marginal = probabilities.mean(0, keepdim=True)
    kl = (probabilities * (probabilities.clamp_min(1e-30).log() - marginal.clamp_min(1e-30).log())).sum(1)
    return float(kl.mean().exp())


def main(argv: list[str] | None = None) -> None:
    """Train a dataset's classifier as a run would and write it where the package ships it."""
    import argparse

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from gan_experiments.checkpoint import save

    parser = argparse.ArgumentParser(prog="python -m gan_experiments.metrics.classifier",
                                     description=main.__doc__)
    parser.add_argument("data", nargs="?", default="mnist_5k", help="a conf/data option (mnist_5k)")
    conf = Path(__file__).resolve().parents[2] / "conf"
    steps = OmegaConf.load(conf / "eval" / "default.yaml").classifier_steps  # as a run trains it
    parser.add_argument("--steps", type=int, default=steps, help=f"eval.classifier_steps ({steps})")
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR)
    args = parser.parse_args(argv)
    node = OmegaConf.load(conf / "data" / f"{args.data}.yaml")
    node.pop("defaults", None)
    data = instantiate(node)
    model, accuracy = train_classifier(data.images, data.labels, args.steps, progress=Progress(True))
    path = args.out / f"classifier-{data.name}-{fingerprint(data.images, data.labels)}-s{args.steps}.pt"
    save(path, {"state": model.state_dict(), "channels": data.shape[0],
                "num_classes": model.head.out_features, "accuracy": accuracy})
    print(f"{path}: held-out accuracy {accuracy:.3f}, sha256 {file_sha256(path)}")


if __name__ == "__main__":
    main()
