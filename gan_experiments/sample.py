"""`python -m gan_experiments.sample <run_dir>`: draw from a trained run's generator.

Writes a PNG grid, a folder of N single images (e.g. to augment a small dataset, as seed 001
suggests), or an .npz of raw samples in [-1, 1] (the only choice for 2D point data)."""

import argparse
import shlex
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torchvision.utils import save_image

from gan_experiments.errors import UserError
from gan_experiments.paths import RunPaths
from gan_experiments.state import TrainingState
from gan_experiments.summaries import image_grid
from gan_experiments.train import build


def load_generator(run_dir: Path, ema: bool = False) -> torch.nn.Module:
    """The generator of the run in `run_dir` (its EMA generator with `ema`), from its checkpoint,
    in eval mode. Raises UserError for a folder without a checkpoint, naming the run folders
    below it where it holds a sweep."""
    if not RunPaths(run_dir).checkpoint.is_file():
        runs = sorted(p.parents[1] for p in Path(run_dir).glob("*/checkpoints/last.pt"))
        if runs:
            raise UserError(f"{run_dir} holds a sweep, not one run: sample from one of its "
                            f"runs, e.g. python -m gan_experiments.sample {shlex.quote(str(runs[0]))} (runs: "
                            f"{', '.join(r.name for r in runs)}).")
        raise UserError(f"There is no checkpoint at {RunPaths(run_dir).checkpoint}: point at a "
                        f"run's folder (outputs/runs/<run>, or a sweep's outputs/sweeps/<sweep>/<job>) "
                        f"that has trained to its first checkpoint.")
    state = TrainingState.load(RunPaths(run_dir).checkpoint, "cpu")
    cfg = OmegaConf.create(state.config)
    generator, _ = build(cfg.model, data_shape=tuple(state.data_shape), is_image=state.is_image)
    weights = state.gan["generator"]
    if ema:
        if state.gan["ema"] is None:
            raise UserError(f"{run_dir} was trained without an EMA generator (trainer.ema_decay=0); drop --ema.")
        prefix = "module."
        weights = {k[len(prefix):]: v for k, v in state.gan["ema"].items() if k.startswith(prefix)}
    generator.load_state_dict(weights)
    generator.latent_dim = cfg.model.latent_dim
    generator.is_image = state.is_image
    return generator.eval()


@torch.no_grad()
def draw(generator: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(seed))
    return torch.cat([generator(chunk) for chunk in z.split(500)])


def positive(text: str) -> int:
    """argparse's type for a count: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a number of samples: give a whole number of at least 1")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gan_experiments.sample", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-n", "--num", type=positive, default=64, help="number of samples (64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", action="store_true", help="use the EMA generator")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--grid", type=Path, help="PNG grid (default: <run_dir>/sample_grid.png)")
    out.add_argument("--images", type=Path, help="folder for N single PNG images")
    out.add_argument("--npz", type=Path, help=".npz file with the array 'samples'")
    args = parser.parse_args(argv)
    try:
        generator = load_generator(args.run_dir, args.ema)
        samples = draw(generator, args.num, args.seed)
        if args.npz:
            np.savez_compressed(args.npz, samples=samples.numpy())
            written = args.npz
        elif not generator.is_image:
            raise UserError("This run generates 2D points, not images: write them with --npz FILE.")
        elif args.images:
            args.images.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(samples):
                save_image(image, args.images / f"{i:06d}.png", normalize=True, value_range=(-1, 1))
            written = args.images
        else:
            written = args.grid or args.run_dir / "sample_grid.png"
            save_image(image_grid(samples), written)
    except UserError as error:
        raise SystemExit(f"Error: {error}") from None
    print(f"Wrote {args.num} samples to {written}")


if __name__ == "__main__":
    main()
