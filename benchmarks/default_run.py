"""The default run's trade-off: DCGAN training steps per second at several G and D widths, side
by side in one process on the default data (5,000 MNIST digits, batch 64), as ratios to the
widths of Radford et al. (64, 64). The sample quality of each choice comes from whole runs
(see BENCHMARKS.md for the commands); this script only measures speed.

    python benchmarks/default_run.py               # about a minute on a 2-core CPU
    python benchmarks/default_run.py --steps 300 --widths 64,64 48,32
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gan_experiments.config import register_configs  # noqa: E402
from gan_experiments.train import (  # noqa: E402
    _autocast_factory,
    build,
    build_gan,
    make_losses,
    train_step,
)


def steps_per_second(cfg, data, steps: int, warmup: int = 10) -> float:
    torch.manual_seed(0)
    gan = build_gan(cfg, data, torch.device("cpu"))
    losses = make_losses(cfg)
    scalers = (torch.amp.GradScaler("cpu", enabled=False),) * 2
    autocast = _autocast_factory(torch.device("cpu"), "fp32")
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        measure = (i + 1) % cfg.trainer.log_every == 0  # as the loop does
        train_step(gan, data, losses, cfg.trainer, 0.0, scalers, autocast, measure)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--widths", nargs="+", default=["64,64", "48,48", "48,32", "32,32"],
                        help="g_width,d_width pairs; the first is the baseline")
    args = parser.parse_args()
    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        base = compose("config")
    data = build(base.data, device="cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps each")
    print("| G width | D width | steps/s | ratio to the first |\n|---|---|---|---|")
    first = None
    for pair in args.widths:
        g, d = (int(w) for w in pair.split(","))
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"model.g_width={g}", f"model.d_width={d}"])
        rate = steps_per_second(cfg, data, args.steps)
        first = first or rate
        print(f"| {g} | {d} | {rate:.1f} | {rate / first:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
