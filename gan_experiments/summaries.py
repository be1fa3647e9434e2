"""What a run shows in TensorBoard and under samples/: image grids, 2D scatter plots, hparams."""

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # runs are headless; no display is ever needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from torch.utils.tensorboard.summary import hparams  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

# A 64-digit grid of 28x28 images is 242 px: too small to judge samples by eye.
MIN_GRID_WIDTH = 512


def image_grid(images: torch.Tensor, nrow: int = 8, min_width: int = MIN_GRID_WIDTH) -> torch.Tensor:
    """A grid of images in [-1, 1], blown up by an integer factor (nearest neighbour, so pixels
    stay sharp) to at least `min_width` pixels."""
    grid = make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1))
    factor = max(1, math.ceil(min_width / grid.shape[-1]))
    return F.interpolate(grid[None], scale_factor=factor, mode="nearest")[0]


def log_images(writer: SummaryWriter, tag: str, images: torch.Tensor, step: int, png: Path) -> None:
    grid = image_grid(images)
    writer.add_image(tag, grid, step)
    png.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, png)


def log_points(writer: SummaryWriter, tag: str, fake: torch.Tensor, real: torch.Tensor,
               step: int, png: Path) -> None:
    fake, real = fake.float().cpu().numpy(), real.float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=MIN_GRID_WIDTH // 4)
    ax.scatter(real[:, 0], real[:, 1], s=4, c="tab:gray", alpha=0.4, label="data")
    ax.scatter(fake[:, 0], fake[:, 1], s=4, c="tab:red", alpha=0.6, label="generated")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(f"step {step}", fontsize=8)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    writer.add_figure(tag, fig, step)  # closes the figure


def log_samples(writer, tag, fake, reference_points, step, png):
    """Image grid for images; for 2D data a scatter of `fake` over `reference_points`."""
    if reference_points is None:
        log_images(writer, tag, fake, step, png)
    else:
        log_points(writer, tag, fake, reference_points, step, png)


def hparam_value(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass
class HParams:
    """A run's settings as the HPARAMS tab shows them. TensorBoard sorts its columns by name
    but puts first the ones marked as differing between runs: `leading` (the keys a sweep
    varies and the config groups chosen) are marked so, ahead of dozens of constant settings."""

    values: dict
    leading: tuple[str, ...] = ()


def log_hparams(writer: SummaryWriter, params: HParams, metric_names: list[str]) -> None:
    """Declare the run's hyperparameters and the metrics the HPARAMS tab compares runs by.
    The metric values themselves are ordinary scalars logged under the same tags, so the
    declaration goes into this run's own event file (add_hparams would start a new run)."""
    clean = {k: hparam_value(v) for k, v in params.values.items()}
    experiment, start, end = hparams(clean, dict.fromkeys(metric_names, 0.0))
    content = experiment.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(content.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in params.leading
    content.content = data.SerializeToString()
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary)


def log_layout(writer: SummaryWriter) -> None:
    """CUSTOM SCALARS: both losses on one chart and D's two outputs on another, so the balance
    of a run reads at a glance."""
    writer.add_custom_scalars({"GAN balance": {
        "loss/D and loss/G": ["Multiline", ["loss/D", "loss/G"]],
        "D(x) and D(G(z))": ["Multiline", ["D/real", "D/fake"]],
    }})
