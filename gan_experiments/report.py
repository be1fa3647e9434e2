"""`python -m gan_experiments.report <sweep_dir>`: one table of a sweep, seeds aggregated.

Runs are grouped by their overrides minus `seed`. Only runs whose status is `ok` are averaged,
as mean ± std (n); interrupted, diverged, failed and still running runs are counted in their own
columns. Groups are sorted by the sweep's objective. A preset's `reference:` block adds the
paper's numbers beside ours, or checks the paper's ordering claim. Writes report.md, report.csv,
report.html (self-contained) and the figures report_*.png into the sweep dir."""

import argparse
import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

from gan_experiments import report_figures as figures
from gan_experiments.lifecycle import RunPaths
from gan_experiments.metrics.registry import higher_is_better
from gan_experiments.report_figures import Picture, Table
from gan_experiments.sweep import find_runs, override_key

STATUSES = ("ok", "interrupted", "diverged", "failed", "running")
METRIC_PREFIXES = ("metrics/", "metrics_ema/", "final/")
LOSS_TAGS = ["loss/D", "loss/G"]


class Stat(NamedTuple):
    mean: float
    std: float | None  # None for a single run: one number has no spread
    n: int


def stat(values: list) -> Stat | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None,
                len(values))


def fmt(s: Stat | None) -> str:
    if s is None:
        return "–"
    spread = "" if s.std is None else f" ± {s.std:.2g}"
    return f"{s.mean:.4g}{spread} ({s.n})"


def run_status(run: dict) -> str:
    return run["status"].get("status", "failed")


def ok_runs(runs: list[dict]) -> list[dict]:
    return [r for r in runs if run_status(r) == "ok"]


def metric_value(run: dict, tag: str) -> float | None:
    return ((run["status"].get("metrics") or {}).get(tag) or {}).get("value")


def settings(overrides: list[str]) -> set[str]:
    """The overrides that make a config: all but the seed and Hydra's own (find_runs has
    dropped the result-neutral ones)."""
    return {o for o in overrides if override_key(o) != "seed" and not override_key(o).startswith("hydra.")}


def shared_settings(runs: list[dict]) -> set[str]:
    """Overrides every run has (`+experiment=...`, `trainer.steps=...`): said once, not in
    every config's name, unless nothing else tells the configs apart."""
    common = set.intersection(*(settings(r["overrides"]) for r in runs))
    differing = {frozenset(settings(r["overrides"]) - common) for r in runs}
    return common if len(differing) > 1 else set()


def group_key(overrides: list[str], shared: set[str] = frozenset()) -> str:
    return ",".join(sorted(settings(overrides) - shared)) or "(defaults)"


def seed_of(run: dict) -> int:
    seeds = [o.split("=", 1)[1] for o in run["overrides"] if override_key(o) == "seed"]
    return int(seeds[0]) if seeds else 0  # the config's default seed


@dataclass
class Row:
    config: str
    runs: list[dict]
    objective: Stat | None  # over the ok runs' status["value"]
    metrics: dict[str, Stat | None]  # tag -> over the ok runs

    def count(self, status: str) -> int:
        return sum(run_status(r) == status for r in self.runs)


def summarise(runs: list[dict], shared: set[str] = frozenset()) -> tuple[list[Row], list[str], str]:
    """Rows sorted best first, the metric tags any run reported, and the objective's name.
    `shared`: overrides left out of the configs' names."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(group_key(run["overrides"], shared), []).append(run)
    objective = next((r["status"]["objective"] for r in runs if r["status"].get("objective")),
                     "loss_G")
    columns = sorted({tag for r in runs for tag in r["status"].get("metrics") or {}
                      if tag.startswith(METRIC_PREFIXES)})
    rows = [Row(config, members,
                stat([r["status"].get("value") for r in ok_runs(members)]),
                {tag: stat([metric_value(r, tag) for r in ok_runs(members)]) for tag in columns})
            for config, members in groups.items()]
    sign = -1 if higher_is_better(objective) else 1
    rows.sort(key=lambda r: (r.objective is None, sign * r.objective.mean if r.objective else 0))
    return rows, columns, objective


def results_table(rows: list[Row], columns: list[str], objective: str) -> Table:
    direction = "max" if higher_is_better(objective) else "min"
    return Table(["config", f"{objective} ({direction})", *STATUSES, *columns],
                 [[r.config, fmt(r.objective), *(str(r.count(s)) for s in STATUSES),
                   *(fmt(r.metrics[c]) for c in columns)] for r in rows])


def csv_cells(rows: list[Row], columns: list[str], objective: str) -> list[list]:
    """Numbers one per cell, for pandas or a spreadsheet; None is written as an empty cell."""
    header = ["config", "objective", *STATUSES]
    for name in ["value", *columns]:
        header += [f"{name}_mean", f"{name}_std", f"{name}_n"]
    cells = [header]
    for r in rows:
        line = [r.config, objective, *(r.count(s) for s in STATUSES)]
        for s in [r.objective, *(r.metrics[c] for c in columns)]:
            line += [s.mean, s.std, s.n] if s else [None, None, 0]
        cells.append(line)
    return cells


# --- Against the paper ---------------------------------------------------------------------

def load_config(run: dict) -> dict:
    path = RunPaths(run["dir"]).config
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def lookup(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def beyond_2se(difference: float, se: float) -> bool:
    return abs(difference) > 2 * se


def paper_se(spread: float | None, reference: dict) -> float | None:
    """The standard error of a paper's mean. Papers print ± as a std over `runs` runs, or as
    the standard error itself (`spread: se`, as in PacGAN's Table 1)."""
    if spread is None:
        return None
    if reference.get("spread", "std") == "se":
        return spread
    return spread / math.sqrt(reference.get("runs") or 1)


def paper_verdict(ours: Stat | None, paper_mean: float, paper_error: float | None) -> str:
    """Is our mean within 2 standard errors of the paper's? The SE of the difference combines
    our spread over n runs with the paper's standard error."""
    if ours is None:
        return "no ok runs"
    if ours.n < 2:
        return "n=1, no verdict"
    se = math.sqrt(ours.std**2 / ours.n + (paper_error or 0.0) ** 2)
    difference = ours.mean - paper_mean
    side = "outside" if beyond_2se(difference, se) else "within"
    return f"{side} 2 SE (Δ = {difference:+.3g}, SE = {se:.2g})"


def paper_table(rows: list[Row], reference: dict) -> Table:
    """Per config and referenced metric: ours beside the paper row that the config's value of
    `row_key` picks (a group's runs differ only in seed, so one run's config speaks for all)."""
    paper_rows = {str(k): v for k, v in reference["rows"].items()}
    cells = []
    for row in rows:
        key = lookup(load_config((ok_runs(row.runs) or row.runs)[0]), reference["row_key"])
        paper = paper_rows.get(str(key))
        if paper is None:
            cells.append([row.config, f"none for {reference['row_key']}={key}", "", "", "", ""])
            continue
        for name, (mean, std) in paper["metrics"].items():
            ours = row.metrics.get(f"metrics/{name}")
            paper_cell = f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"
            cells.append([row.config, paper.get("label", str(key)), name, fmt(ours), paper_cell,
                          paper_verdict(ours, mean, paper_se(std, reference))])
    return Table(["config", "paper row", "metric", "ours: mean ± std (n)",
                  f"paper: mean ± {reference.get('spread', 'std')}", "verdict"], cells)


def ordering_sentence(rows: list[Row], reference: dict) -> str:
    """Does our ordering of the `better` and `worse` configs on `metric` agree with the paper?"""
    tag, metric = f"metrics/{reference['metric']}", reference["metric"]
    claim = f"{reference['source']}: \"{reference['claim']}\"."
    sides = {}
    for side in ("better", "worse"):
        override = reference[side]
        matches = [r for r in rows if override in r.runs[0]["overrides"]]
        if len(matches) != 1:
            return f"{claim} Not checked: {len(matches)} configs have {override}, need one."
        sides[side] = matches[0].metrics.get(tag)
        if sides[side] is None:
            return f"{claim} Not checked: no ok run of {override} reported {metric}."
    better, worse = sides["better"], sides["worse"]
    maximise = higher_is_better(metric)
    same_order = better.mean > worse.mean if maximise else better.mean < worse.mean
    order = "as the paper does" if same_order else "the other way"
    measured = (f"{reference['better']} {fmt(better)} vs {reference['worse']} {fmt(worse)} in "
                f"{metric} ({'higher' if maximise else 'lower'} is better)")
    # Agreeing or disagreeing is claimed only for a difference beyond the seeds' noise.
    if better.n < 2 or worse.n < 2:
        return f"{claim} No verdict with n=1 on a side: {measured}; our means order them {order}."
    se = math.sqrt(better.std**2 / better.n + worse.std**2 / worse.n)
    difference = better.mean - worse.mean
    if beyond_2se(difference, se):
        return (f"{claim} Ours {'agrees' if same_order else 'disagrees'}: {measured}; the "
                f"difference {difference:+.3g} is beyond 2 SE (SE = {se:.2g}).")
    return (f"{claim} Ours cannot tell them apart: {measured}; the difference {difference:+.3g} "
            f"is not beyond 2 SE (SE = {se:.2g}), though our means order them {order}.")


def reference_section(rows: list[Row]) -> tuple[str, list] | None:
    """The 'Against the paper' section when the sweep's preset carries a `reference:` block."""
    # Every job of a preset carries the same block; the first run that has one speaks for all.
    reference = next(filter(None, (load_config(row.runs[0]).get("reference") for row in rows)),
                     None)
    if reference is None:
        return None
    if "claim" in reference:
        return "Against the paper", [ordering_sentence(rows, reference)]
    paper_term = ("(paper SE)²" if reference.get("spread") == "se"
                  else f"paper std²/{reference.get('runs')}")
    source = (f"Source: {reference['source']}. Paper rows picked by {reference['row_key']}; "
              f"SE = sqrt(our std²/n + {paper_term}).")
    return "Against the paper", [source, paper_table(rows, reference)]


# --- Figures ------------------------------------------------------------------------------

def representative_sample(row: Row) -> tuple[str, Path] | None:
    """The last sample grid of the config's lowest ok seed (else of any run that has one)."""
    with_samples = [r for r in row.runs if RunPaths(r["dir"]).last_sample()]
    if not with_samples:
        return None
    run = min(with_samples, key=lambda r: (run_status(r) != "ok", seed_of(r)))
    png = RunPaths(run["dir"]).last_sample()
    step = int(png.stem.removeprefix("step_"))
    return f"{figures.wrap(row.config)}\nseed {seed_of(run)}, {run_status(run)}, step {step}", png


def figure_blocks(sweep_dir: Path, rows: list[Row], objective: str) -> list:
    """Each figure as a Picture, or a sentence saying why it was skipped."""
    ok = {row.config: [r["dir"] for r in ok_runs(row.runs)] for row in rows}
    tags = [f"metrics/{objective}", *LOSS_TAGS]
    finals = {row.config: [r["status"]["value"] for r in ok_runs(row.runs)
                           if isinstance(r["status"].get("value"), (int, float))] for row in rows}
    samples = dict(filter(None, (representative_sample(row) for row in rows)))
    drawn = [
        (figures.learning_curves(ok, tags, sweep_dir / "report_curves.png"), "report_curves.png",
         f"Learning curves of {', '.join(tags)}: mean ± std band over the ok runs of each config.",
         f"No learning curves: no ok run has TensorBoard scalars {', '.join(tags)}."),
        (figures.objective_chart(finals, objective, higher_is_better(objective),
                                 sweep_dir / "report_objective.png"), "report_objective.png",
         f"Final {objective} per config: mean ± std over the ok runs, n in the label.",
         f"No objective chart: no ok run has a value of {objective}."),
        (figures.sample_grids(samples, sweep_dir / "report_samples.png"), "report_samples.png",
         "The last sample grid of one run per config (its lowest ok seed).",
         "No sample grids: no run has samples/step_*.png."),
    ]
    for made, file, _, _ in drawn:
        if not made:  # an older report's picture would show what is no longer there
            (sweep_dir / file).unlink(missing_ok=True)
    return [Picture(file, caption) if made else skipped for made, file, caption, skipped in drawn]


# --- Output -------------------------------------------------------------------------------

def markdown(sections: list[tuple[str, list]], pictures: bool = True) -> str:
    """The sections as markdown; with `pictures=False` (a terminal) a picture is its file name."""
    lines = []
    for heading, blocks in sections:
        lines.append(f"## {heading}\n")
        for block in blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(block.header) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(cells) + " |" for cells in block.rows]
                lines.append("")
            elif isinstance(block, Picture):
                lines.append(f"![{block.caption}]({block.file})\n" if pictures
                             else f"{block.file}: {block.caption}\n")
            else:
                lines.append(f"{block}\n")
    return "\n".join(lines)


def report(sweep_dir: Path) -> str:
    """Writes the report files into `sweep_dir`; returns the text for the terminal (tables and
    sentences, no pictures)."""
    sweep_dir = Path(sweep_dir)
    runs = find_runs(sweep_dir, "**/status.json")
    if not runs:
        raise SystemExit(f"Error: no runs (folders with status.json) under {sweep_dir}. Pass the "
                         f"sweep dir that `python -m gan_experiments -m ...` printed.")
    shared = shared_settings(runs)
    rows, columns, objective = summarise(runs, shared)
    better = "higher" if higher_is_better(objective) else "lower"
    intro = (f"Mean ± std (n) over the runs whose status is ok; interrupted, diverged, failed and "
             f"running runs are counted, never averaged in. Sorted by {objective}, {better} is "
             f"better." + (f" Every run has {' '.join(sorted(shared))}." if shared else ""))
    sections = [("Results", [intro, results_table(rows, columns, objective)])]
    sections += filter(None, [reference_section(rows)])
    sections.append(("Figures", figure_blocks(sweep_dir, rows, objective)))
    title = f"Sweep report: {sweep_dir}"
    (sweep_dir / "report.md").write_text(f"# {title}\n\n{markdown(sections)}")
    with open(sweep_dir / "report.csv", "w", newline="") as f:
        csv.writer(f).writerows(csv_cells(rows, columns, objective))
    figures.write_html(sweep_dir / "report.html", title, sections)
    return markdown(sections, pictures=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gan_experiments.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    print(report(args.sweep_dir))
    written = [*args.sweep_dir.glob("report.*"), *args.sweep_dir.glob("report_*.png")]
    print(f"Written: {', '.join(str(p) for p in sorted(written))}")


if __name__ == "__main__":
    main()
