"""The sweep report's pictures and its one-file HTML page: learning curves with a band over
seeds, the final objective per config with error bars, and the last sample grid per config.
Bands and error bars are the 95 % bootstrap intervals of the mean that the report's tables
give (comparison.py)."""

import base64
import html
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib.figure
import matplotlib.image
import numpy as np
from matplotlib import colormaps

from gan_experiments import comparison

DPI = 100
WIDTH = 14  # inches: 1,400 px, readable beside a browser's scroll bar


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Picture:
    file: str  # a PNG beside the report, named relative to it
    caption: str


def new_figure(width: float, height: float) -> matplotlib.figure.Figure:
    # A pyplot-free Figure renders with Agg: no display, and nothing to close afterwards.
    return matplotlib.figure.Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def style(index: int) -> dict:
    """The same colour for a config in every figure; line styles tell apart configs 11 to 30."""
    return {"color": colormaps["tab10"](index % 10), "linestyle": ("-", "--", ":")[index // 10 % 3]}


def wrap(config: str, width: int = 32) -> str:
    return textwrap.fill(config.replace(",", ", "), width)


def read_scalars(run_dir: Path, tags: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(steps, values) per tag from the event files directly in `run_dir`. A resumed run may log
    a step twice; the later value wins."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    series = {}
    for tag in set(tags) & set(events.Tags()["scalars"]):
        by_step = {e.step: e.value for e in events.Scalars(tag)}
        steps = np.array(sorted(by_step))
        series[tag] = steps, np.array([by_step[s] for s in steps])
    return series


def band(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Steps, mean and its 95 % bootstrap interval (low, high) over seeds that logged different
    steps: each seed is interpolated onto the union of their steps, within the range that every
    seed covers (no extrapolation)."""
    first, last = max(s[0] for s, _ in series), min(s[-1] for s, _ in series)
    steps = np.unique(np.concatenate([s for s, _ in series]))
    steps = steps[(steps >= first) & (steps <= last)]
    grid = np.stack([np.interp(steps, s, v) for s, v in series])
    return steps, grid.mean(axis=0), *comparison.mean_cis(grid)


def learning_curves(runs: dict[str, list[Path]], tags: list[str], png: Path) -> bool:
    """One subplot per tag, one colour per config: mean over the config's runs, its 95 %
    bootstrap interval as a band.
    Returns False, writing nothing, when no run logged any of the tags."""
    scalars = {config: [read_scalars(d, tags) for d in dirs] for config, dirs in runs.items()}
    drawn = [t for t in tags if any(t in seed for seeds in scalars.values() for seed in seeds)]
    if not drawn:
        return False
    fig = new_figure(WIDTH, 5.5)
    legend = {}
    for ax, tag in zip(fig.subplots(1, len(drawn), squeeze=False)[0], drawn, strict=True):
        for index, (config, seeds) in enumerate(scalars.items()):
            series = [seed[tag] for seed in seeds if tag in seed]
            if not series:
                continue
            steps, mean, low, high = band(series)
            (line,) = ax.plot(steps, mean, marker="o" if len(steps) < 12 else None, **style(index))
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
            legend[f"{wrap(config, 40)} (n={len(series)})"] = line
        ax.set(title=tag, xlabel="step", ylabel="loss" if tag.startswith("loss/") else tag.split("/")[-1])
        ax.grid(alpha=0.3)
    fig.legend(legend.values(), legend.keys(), loc="outside lower center",
               ncols=min(len(legend), 3), fontsize=10)
    fig.suptitle("Learning curves: mean over the ok runs of each config, 95 % bootstrap interval "
                 "of the mean as the band", fontsize=14)
    fig.savefig(png)
    return True


def objective_chart(values: dict[str, list[float]], objective: str, maximise: bool,
                    png: Path) -> bool:
    """The final objective per config, best on top: the mean over seeds with its 95 % bootstrap
    interval, each seed a cross.
    Returns False, writing nothing, when no config has a value."""
    drawn = [(index, config, v) for index, (config, v) in enumerate(values.items()) if v]
    if not drawn:
        return False
    fig = new_figure(WIDTH * 0.75, 1.8 + 0.55 * len(drawn))
    ax = fig.subplots()
    for y, (index, _, seeds) in enumerate(drawn):
        mean = np.mean(seeds)
        low, high = comparison.mean_ci(seeds) or (mean, mean)
        ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", markersize=8, capsize=6,
                    color=style(index)["color"])
        ax.scatter(seeds, [y] * len(seeds), marker="x", color="0.35", zorder=3)
    ax.set_yticks(range(len(drawn)), [f"{wrap(c)} (n={len(v)})" for _, c, v in drawn])
    ax.invert_yaxis()
    ax.set_xlabel(f"{objective} ({'higher' if maximise else 'lower'} is better)")
    ax.set_title(f"Final {objective} per config: mean and 95 % bootstrap CI over ok runs; "
                 f"× = one run")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(png)
    return True


def sample_grids(samples: dict[str, Path], png: Path) -> bool:
    """The given PNGs side by side (four per row), each titled by its label."""
    if not samples:
        return False
    columns = min(4, len(samples))
    rows = math.ceil(len(samples) / columns)
    fig = new_figure(WIDTH, 1 + 4.2 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (label, path) in zip(axes, samples.items(), strict=False):
        # Nearest: a generated image's own pixels, not a blur of them, are what one judges.
        ax.imshow(matplotlib.image.imread(path), interpolation="nearest")
        ax.set_title(label, fontsize=10)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("Last sample grid of one run per config", fontsize=14)
    fig.savefig(png)
    return True


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1450px; padding: 0 1em;
       color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
th {{ background: #eee; }}
td:not(:first-child) {{ white-space: nowrap; }}
tr:nth-child(even) td {{ background: #f8f8f8; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ color: #555; margin-top: 0.3em; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""


def block_html(block: str | Table | Picture, folder: Path) -> str:
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in block.header)
        # <wbr>: a long config name may break after its commas instead of widening the table.
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c).replace(',', ',<wbr>')}</td>"
                                        for c in row) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>\n"
    if isinstance(block, Picture):
        # Inline, so the page is one file that can be mailed or moved without its PNGs.
        data = base64.b64encode((folder / block.file).read_bytes()).decode("ascii")
        caption = html.escape(block.caption)
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                f"<figcaption>{caption}</figcaption></figure>\n")
    return f"<p>{html.escape(block)}</p>\n"


def write_html(path: Path, title: str, sections: list[tuple[str, list]]) -> None:
    """`sections`: (heading, blocks), each block a paragraph, a Table or a Picture."""
    body = "".join(f"<h2>{html.escape(heading)}</h2>\n"
                   + "".join(block_html(b, path.parent) for b in blocks)
                   for heading, blocks in sections)
    path.write_text(PAGE.format(title=html.escape(title), body=body))
