"""What a run shows in TensorBoard and under samples/: image grids, 2D scatter plots, hparams."""

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # runs are headless; no display is ever needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from torch.utils.tensorboard.summary import hparams  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from gan_experiments.checkpoint import flatten  # noqa: E402

# A 64-digit grid of 28x28 images is 242 px: too small to judge samples by eye.
MIN_GRID_WIDTH = 512


def image_grid(images: torch.Tensor, nrow: int = 8, min_width: int = MIN_GRID_WIDTH) -> torch.Tensor:
    """A grid of images in [-1, 1], blown up by an integer factor (nearest neighbour, so pixels
    stay sharp) to at least `min_width` pixels."""
    grid = make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1))
    factor = max(1, math.ceil(min_width / grid.shape[-1]))
    return F.interpolate(grid[None], scale_factor=factor, mode="nearest")[0]


def render_samples(fake: torch.Tensor, reference_points: torch.Tensor | None, step: int, png: Path) -> torch.Tensor:
    """Save the picture of `fake` to `png` and return it, (3, H, W): for images a grid of them,
    for 2D data a scatter of `fake` (N, 2) over `reference_points` (M, 2)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    if reference_points is None:
        grid = image_grid(fake)
        save_image(grid, png)
        return grid
    fake, real = fake.float().cpu().numpy(), reference_points.float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=MIN_GRID_WIDTH // 4)
    ax.scatter(real[:, 0], real[:, 1], s=4, c="tab:gray", alpha=0.4, label="data")
    ax.scatter(fake[:, 0], fake[:, 1], s=4, c="tab:red", alpha=0.6, label="generated")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(f"step {step}", fontsize=8)
    fig.savefig(png)
    fig.canvas.draw()  # the same pixels as the file, without reading it back
    rgb = torch.from_numpy(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()).permute(2, 0, 1)
    plt.close(fig)
    return rgb


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


def run_hparams(cfg: DictConfig, choices: dict, swept: set[str]) -> HParams:
    """What the HPARAMS tab compares: the swept values and the chosen config options lead,
    then every other setting."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    # A preset's published numbers are no setting of the run.
    settings = {k: v for k, v in flat.items()
                if not k.endswith(("_target_", "_partial_")) and not k.startswith(("reference.", "logger."))}
    # Where the numbers are logged changes none of them.
    groups = {k: v for k, v in choices.items() if not k.startswith(("hydra", "logger")) and v is not None}
    varied = {k: groups.get(k, settings.get(k)) for k in sorted(swept) if k in groups or k in settings}
    return HParams({**varied, **groups, **settings}, leading=(*varied, *groups))


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
