"""The saturation of the minimax loss, read from a loss study's curves: D(G(z)) (`D/fake`) and
the norm of G's gradient (`grad_norm/G`) from the first steps on, mean over each loss's ok
runs. Writes <sweep>/saturation.png.

    python benchmarks/saturation.py outputs/loss_study_mlp
"""

import argparse
from pathlib import Path

import numpy as np

from gan_experiments import report_figures as figures
from gan_experiments.report import group_key, ok_runs, shared_settings
from gan_experiments.sweep import find_runs

TAGS = ["D/fake", "grad_norm/G"]
STEPS = [25, 100, 500, 2000, 5000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args()
    runs = ok_runs(find_runs(args.sweep_dir, "**/status.json"))
    shared = shared_settings(runs)
    groups: dict[str, list[Path]] = {}
    for run in runs:
        groups.setdefault(group_key(run["overrides"], shared), []).append(Path(run["dir"]))
    print("| config | n | " + " | ".join(f"{tag} at {s}" for tag in TAGS for s in STEPS)
          + " |")
    print("|---|---|" + "---|" * (2 * len(STEPS)))
    for config, dirs in sorted(groups.items()):
        series = [figures.read_scalars(d, TAGS) for d in dirs]
        cells = []
        for tag in TAGS:
            for step in STEPS:
                values = [np.interp(step, *s[tag]) for s in series if tag in s]
                cells.append(f"{np.mean(values):.3g}")
        print(f"| {config} | {len(dirs)} | " + " | ".join(cells) + " |")
    png = args.sweep_dir / "saturation.png"
    figures.learning_curves({c: d for c, d in sorted(groups.items())}, TAGS, png)
    print(f"\nWritten: {png}")


if __name__ == "__main__":
    main()
