"""`python -m gan_experiments.report <sweep_dir>`: one table of a sweep, seeds aggregated.

Runs are grouped by their overrides minus `seed`. Only runs whose status is `ok` are averaged,
as mean ± std (n) with a 95 % bootstrap interval of the mean; interrupted, diverged, failed, stopped and
still running runs are counted in their own columns. Groups are sorted by the sweep's objective,
and each is compared with the best (or, with --pairs all, every pair) by the tests of
comparison.py. A metric that the runs measured in different ways (feature extractor, its
weights, sample counts, real split) is flagged and never averaged. A preset's `reference:`
block adds the paper's numbers beside ours where the paper measured the same metric, or checks
the paper's ordering claim. Writes report.md, report.csv, report.html (self-contained) and the
figures report_*.png into the sweep dir."""

import argparse
import csv
import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from gan_experiments import comparison
from gan_experiments import report_figures as figures
from gan_experiments.comparison import Summary
from gan_experiments.metrics.registry import higher_is_better
from gan_experiments.metrics.registry import tag as metric_tag
from gan_experiments.paths import RunPaths
from gan_experiments.record import STATUSES
from gan_experiments.report_figures import Picture, Table
from gan_experiments.sweep import Run, find_runs, override_key

METRIC_PREFIXES = ("metrics/", "metrics_ema/", "final/")
LOSS_TAGS = ["loss/D", "loss/G"]


def numbers(values: list) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def stat(values: list, tag: str) -> Summary | None:
    return comparison.summarise(numbers(values), higher_is_better(tag))


def fmt(s: Summary | None) -> str:
    return "–" if s is None else s.format()


def ok_runs(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.record.status == "ok"]


def metric_value(run: Run, tag: str) -> float | None:
    return run.record.value_of(tag)


def settings(overrides: list[str]) -> set[str]:
    """The overrides that make a config: all but the seed and Hydra's own (find_runs has
    dropped the result-neutral ones)."""
    return {o for o in overrides if override_key(o) != "seed" and not override_key(o).startswith("hydra.")}


def shared_settings(runs: list[Run]) -> set[str]:
    """Overrides every run has (`+experiment=...`, `trainer.steps=...`): said once, not in
    every config's name, unless nothing else tells the configs apart."""
    common = set.intersection(*(settings(r.overrides) for r in runs))
    differing = {frozenset(settings(r.overrides) - common) for r in runs}
    return common if len(differing) > 1 else set()


def group_key(overrides: list[str], shared: set[str] = frozenset()) -> str:
    return ",".join(sorted(settings(overrides) - shared)) or "(defaults)"


def seed_of(run: Run) -> int:
    seeds = [o.split("=", 1)[1] for o in run.overrides if override_key(o) == "seed"]
    return int(seeds[0]) if seeds else 0  # the config's default seed


@dataclass
class Row:
    config: str
    runs: list[Run]
    objective: Summary | None  # over the ok runs' status["value"]
    metrics: dict[str, Summary | None]  # tag -> over the ok runs

    def count(self, status: str) -> int:
        return sum(r.record.status == status for r in self.runs)

    def values(self, tag: str | None = None) -> list[float]:
        """The ok runs' objective (tag None) or metric values."""
        return numbers([r.record.value if tag is None else metric_value(r, tag)
                        for r in ok_runs(self.runs)])


def method(run: Run, tag: str) -> str:
    """How a run measured a metric, as one comparable string ("" for a loss, which has none)."""
    measured = run.record.metrics.get(tag)
    return json.dumps(measured.method, sort_keys=True) if measured and measured.method else ""


def measured_differently(runs: list[Run], columns: list[str]) -> dict[str, dict[str, int]]:
    """Tags whose ok runs measured them in more than one way: tag -> {way: runs}."""
    found = {}
    for tag in columns:
        ways = Counter(method(r, tag) for r in ok_runs(runs) if metric_value(r, tag) is not None)
        if len(ways) > 1:
            found[tag] = dict(ways)
    return found


def metric_columns(runs: list[Run]) -> list[str]:
    """The metric tags any run reported, in the table's order."""
    return sorted({tag for r in runs for tag in r.record.metrics
                   if tag.startswith(METRIC_PREFIXES)})


def summarise(runs: list[Run], shared: set[str] = frozenset(),
              mixed: dict[str, dict] | None = None) -> tuple[list[Row], list[str], str]:
    """Rows sorted best first, the metric tags any run reported, and the objective's name.
    `shared`: overrides left out of the configs' names. A metric measured in different ways
    across the sweep (`mixed`, found here when not given) gets no statistics (None), and
    neither does an objective that is one."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(group_key(run.overrides, shared), []).append(run)
    objective = next((r.record.objective for r in runs if r.record.objective),
                     "loss_G")
    columns = metric_columns(runs)
    if mixed is None:
        mixed = measured_differently(runs, columns)
    rows = []
    for config, members in groups.items():
        row = Row(config, members, None, {})
        if metric_tag(objective) not in mixed:
            row.objective = stat(row.values(), objective)
        row.metrics = {tag: None if tag in mixed else stat(row.values(tag), tag) for tag in columns}
        rows.append(row)
    sign = -1 if higher_is_better(objective) else 1
    rows.sort(key=lambda r: (r.objective is None, sign * r.objective.mean if r.objective else 0))
    return rows, columns, objective


def results_table(rows: list[Row], columns: list[str], objective: str,
                  mixed: dict[str, dict] = None) -> Table:
    direction = "max" if higher_is_better(objective) else "min"
    mixed = mixed or {}

    def cell(row: Row, tag: str) -> str:
        return "not comparable" if tag in mixed else fmt(row.metrics[tag])

    def of_n(row: Row, value: str) -> str:
        return "–" if row.objective is None else f"{getattr(row.objective, value):.4g}"

    return Table(["config", f"{objective} ({direction}): mean ± std (n) [95 % CI]",
                  "median of n", "best of n", *STATUSES, *columns],
                 [[r.config, "not comparable" if metric_tag(objective) in mixed else fmt(r.objective),
                   of_n(r, "median"), of_n(r, "best"), *(str(r.count(s)) for s in STATUSES),
                   *(cell(r, c) for c in columns)] for r in rows])


def csv_cells(rows: list[Row], columns: list[str], objective: str) -> list[list]:
    """Numbers one per cell, for pandas or a spreadsheet; None is written as an empty cell."""
    header = ["config", "objective", *STATUSES]
    fields = ["mean", "std", "n", "ci_low", "ci_high", "ci_method", "median", "best"]
    for name in ["value", *columns]:
        header += [f"{name}_{field}" for field in fields]
    cells = [header]
    for r in rows:
        line = [r.config, objective, *(r.count(s) for s in STATUSES)]
        for s in [r.objective, *(r.metrics[c] for c in columns)]:
            if s is None:
                line += [None, None, 0, None, None, None, None, None]
            else:
                low, high = s.ci or (None, None)
                line += [s.mean, s.std, s.n, low, high, s.method, s.median, s.best]
        cells.append(line)
    return cells


def measurement_section(runs: list[Run], columns: list[str], mixed: dict) -> tuple[str, list]:
    """How each metric was measured; a metric measured more than one way is listed with its
    ways and left out of every mean and comparison."""
    blocks, said = [], set()
    for tag in columns:
        if tag in mixed:
            ways = "; ".join(f"{n} run{'s' * (n > 1)}: {way}" for way, n in mixed[tag].items())
            blocks.append(f"**{tag} is not comparable across this sweep**, so it is not averaged: "
                          f"its runs measured it in {len(mixed[tag])} ways ({ways}). Rerun the "
                          f"odd runs with the same eval settings and data, in a new sweep dir.")
            continue
        how = next((method(r, tag) for r in ok_runs(runs) if metric_value(r, tag) is not None), "")
        if not how or how in said:
            continue
        said.add(how)
        same = [c for c in columns if c not in mixed and any(
            method(r, c) == how for r in ok_runs(runs))]
        fields = json.loads(how)
        weights = fields.pop("weights_sha256", None)
        common = ("extractor", "generated", "real", "device")
        settings = ", ".join(f"{k} = {v}" for k, v in fields.items() if k not in common)  # e.g. k-NN's k
        blocks.append(f"{', '.join(same)}: {fields['extractor']}"
                      + (f", weights sha256 {weights[:16]}…" if weights else "")
                      + f"; {fields['generated']} generated samples against {fields['real']}"
                      + (f"; {settings}" if settings else "") + ".")
    return "How the metrics were measured", blocks or ["No metric beyond the losses was measured."]


# --- Comparisons --------------------------------------------------------------------------

def comparisons_section(rows: list[Row], objective: str, pairs: str = "best",
                        mixed: dict = None) -> tuple[str, list]:
    """Each config against the best one (`pairs="best"`) or every pair (`"all"`), on the
    objective: the difference with its interval, Welch's p, Holm-adjusted across the pairs
    shown, the probability of improvement, a verdict, and seeds needed when unresolved."""
    title = "Comparisons"
    if metric_tag(objective) in (mixed or {}):
        return title, [f"No comparisons: {objective} was measured in different ways."]
    ranked = [r for r in rows if r.objective is not None and r.objective.n > 1]
    if len(ranked) < 2:
        return title, ["No comparisons: they need two configs with at least 2 ok runs each."]
    if pairs == "all":
        chosen = [(a.config, b.config) for a, b in itertools.combinations(ranked, 2)]
    else:
        chosen = [(r.config, ranked[0].config) for r in ranked[1:]]
    maximise = higher_is_better(objective)
    results = comparison.compare({r.config: r.values() for r in ranked}, chosen, maximise)
    method = {c.method for c in results}
    intro = (f"{objective}, {'higher' if maximise else 'lower'} is better. Difference = mean(config) − "
             f"mean(against), with its 95 % bootstrap interval ({' and '.join(sorted(method))} "
             f"here: BCa from n = {comparison.BCA_MIN_N}, the percentile interval below). Welch's "
             f"t-test p, Holm-adjusted across the "
             f"{len(results)} pair{'s' * (len(results) > 1)} shown; a verdict needs Holm p < "
             f"{comparison.ALPHA}. P(config beats against): the share of run pairs in which the "
             f"config's run is better (Mann-Whitney U / n₁n₂). Seeds needed: per config, for "
             f"{comparison.POWER:.0%} power to detect the observed difference at level "
             f"{comparison.ALPHA} (two-sided t-test, statsmodels), for that pair alone: with "
             f"several pairs Holm's correction asks for more.")
    table = Table(["config", "against", "difference [95 % CI]", "Welch p", "Holm p",
                   "P(config beats against)", "verdict", "seeds per config needed"],
                  [[c.a, c.b, f"{c.difference:+.3g} [{c.ci[0]:+.3g}, {c.ci[1]:+.3g}]",
                    f"{c.welch_p:.2g}", f"{c.holm_p:.2g}", f"{c.p_improvement:.2f}", c.verdict,
                    "–" if not c.verdict.startswith("cannot") else
                    (str(c.seeds_needed) if c.seeds_needed else
                     "no difference observed" if c.difference == 0 else "unknown: no spread")]
                   for c in results])
    return title, [intro, table]


# --- Against the paper ---------------------------------------------------------------------

def load_config(run: Run) -> dict:
    path = RunPaths(run.dir).config
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


def paper_verdict(ours: Summary | None, paper_mean: float, paper_error: float | None) -> str:
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


def paper_row_key(row: Row, reference: dict) -> str:
    """The paper row a config stands for: its value of `row_key` in the run's config (a
    group's runs differ only in seed, so one run speaks for all), or, without a row_key, the
    rows' key that is one of the config's overrides (`loss=bce`)."""
    run = (ok_runs(row.runs) or row.runs)[0]
    if "row_key" in reference:
        return str(lookup(load_config(run), reference["row_key"]))
    return next((str(k) for k in reference["rows"] if str(k) in run.overrides), "")


def paper_table(rows: list[Row], reference: dict) -> Table:
    """Per config and referenced metric: ours beside the paper's number when our runs measured
    the same metric, else "not comparable" and no number of ours."""
    paper_rows = {str(k): v for k, v in reference["rows"].items()}
    cells = []
    for row in rows:
        key = paper_row_key(row, reference)
        paper = paper_rows.get(key)
        if paper is None:
            what = reference.get("row_key", "override")
            cells.append([row.config, f"none for {what}={key}" if key else "none", "", "", "", ""])
            continue
        for name, (mean, std) in paper["metrics"].items():
            paper_cell = f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"
            tag = metric_tag(name)
            measured = any(tag in r.record.metrics for r in row.runs)
            if reference.get("comparable") is False:  # the preset says why
                cells.append([row.config, paper.get("label", key), name, "not comparable",
                              paper_cell, f"not comparable: {reference['why']}"])
                continue
            if not measured:
                ours = sorted(t.split("/", 1)[1] for r in row.runs
                              for t in r.record.metrics if t.startswith("metrics/"))
                cells.append([row.config, paper.get("label", key), name, "not comparable",
                              paper_cell, f"not comparable: the paper's {name} is not a metric "
                              f"these runs measured (ours: {', '.join(dict.fromkeys(ours)) or 'none'})"])
                continue
            ours = row.metrics.get(tag)
            verdict = ("not comparable: the runs measured it in different ways"
                       if ours is None and row.values(tag) else
                       paper_verdict(ours, mean, paper_se(std, reference)))
            cells.append([row.config, paper.get("label", key), name, fmt(ours), paper_cell, verdict])
    return Table(["config", "paper row", "metric", "ours: mean ± std (n) [95 % CI]",
                  f"paper: mean ± {reference.get('spread', 'std')}", "verdict"], cells)


def ordering_sentence(rows: list[Row], reference: dict) -> str:
    """Does our ordering of the `better` and `worse` configs on `metric` agree with the paper?
    Agreeing or disagreeing is claimed only when Welch's test resolves the pair."""
    tag, metric = metric_tag(reference["metric"]), reference["metric"]
    claim = f"{reference['source']}: \"{reference['claim']}\"."
    sides = {}
    for side in ("better", "worse"):
        override = reference[side]
        matches = [r for r in rows if override in r.runs[0].overrides]
        if len(matches) != 1:
            return f"{claim} Not checked: {len(matches)} configs have {override}, need one."
        sides[side] = matches[0]
        if matches[0].metrics.get(tag) is None:
            return f"{claim} Not checked: no ok run of {override} reported {metric} comparably."
    better, worse = sides["better"].metrics[tag], sides["worse"].metrics[tag]
    maximise = higher_is_better(metric)
    same_order = better.mean > worse.mean if maximise else better.mean < worse.mean
    order = "as the paper does" if same_order else "the other way"
    measured = (f"{reference['better']} {fmt(better)} vs {reference['worse']} {fmt(worse)} in "
                f"{metric} ({'higher' if maximise else 'lower'} is better)")
    if better.n < 2 or worse.n < 2:
        return f"{claim} No verdict with n=1 on a side: {measured}; our means order them {order}."
    (test,) = comparison.compare({"better": sides["better"].values(tag),
                                  "worse": sides["worse"].values(tag)},
                                 [("better", "worse")], maximise)
    numbers_said = (f"the difference {test.difference:+.3g} [95 % CI {test.ci[0]:+.3g}, "
                    f"{test.ci[1]:+.3g}], Welch p = {test.welch_p:.2g}, P({reference['better']} "
                    f"beats {reference['worse']}) = {test.p_improvement:.2f}")
    if test.verdict in ("better", "worse"):
        return (f"{claim} Ours {'agrees' if test.verdict == 'better' else 'disagrees'}: "
                f"{measured}; {numbers_said}.")
    needed = (f"about {test.seeds_needed} seeds per loss would resolve a difference this size "
              f"at 80 % power" if test.seeds_needed else "the means are equal"
              if test.difference == 0 else "with no spread in either, no test applies")
    return (f"{claim} Ours cannot tell them apart at n = {better.n} and {worse.n}: {measured}; "
            f"{numbers_said}; our means order them {order}; {needed}.")


def reference_section(rows: list[Row]) -> tuple[str, list] | None:
    """The 'Against the paper' section when the sweep's preset carries a `reference:` block:
    an ordering claim, a table of the paper's numbers, or both."""
    # Every job of a preset carries the same block; the first run that has one speaks for all.
    reference = next(filter(None, (load_config(row.runs[0]).get("reference") for row in rows)),
                     None)
    if reference is None:
        return None
    blocks = []
    if "claim" in reference:
        blocks.append(ordering_sentence(rows, reference))
    if "rows" in reference:
        paper_term = ("(paper SE)²" if reference.get("spread") == "se"
                      else f"paper std²/{reference.get('runs')}")
        picked = (f"picked by {reference['row_key']}" if "row_key" in reference
                  else "picked by the config's overrides")
        se = (f"; SE = sqrt(our std²/n + {paper_term})"
              if reference.get("runs") or reference.get("spread") == "se" else "")
        blocks.append(f"Source: {reference.get('numbers_source', reference['source'])}. Paper rows "
                      f"{picked}{se}. A paper number sits beside ours only where our runs "
                      f"measured the same metric.")
        blocks.append(paper_table(rows, reference))
    return "Against the paper", blocks


# --- Figures ------------------------------------------------------------------------------

def representative_sample(row: Row) -> tuple[str, Path] | None:
    """The last sample grid of the config's lowest ok seed (else of any run that has one)."""
    with_samples = [r for r in row.runs if RunPaths(r.dir).last_sample()]
    if not with_samples:
        return None
    run = min(with_samples, key=lambda r: (r.record.status != "ok", seed_of(r)))
    png = RunPaths(run.dir).last_sample()
    step = int(png.stem.removeprefix("step_"))
    return f"{figures.wrap(row.config)}\nseed {seed_of(run)}, {run.record.status}, step {step}", png


def figure_blocks(sweep_dir: Path, rows: list[Row], objective: str, mixed: dict = None) -> list:
    """Each figure as a Picture, or a sentence saying why it was skipped. An objective
    measured in different ways is neither averaged nor drawn."""
    ok = {row.config: [r.dir for r in ok_runs(row.runs)] for row in rows}
    comparable = metric_tag(objective) not in (mixed or {})
    tags = [metric_tag(objective)] * comparable + LOSS_TAGS
    finals = {row.config: row.values() if comparable else [] for row in rows}
    samples = dict(filter(None, (representative_sample(row) for row in rows)))
    drawn = [
        (figures.learning_curves(ok, tags, sweep_dir / "report_curves.png"), "report_curves.png",
         f"Learning curves of {', '.join(tags)}: the mean over the ok runs of each config, its 95 % "
         f"bootstrap interval as the band.",
         f"No learning curves: no ok run has TensorBoard scalars {', '.join(tags)}."),
        (figures.objective_chart(finals, objective, higher_is_better(objective),
                                 sweep_dir / "report_objective.png"), "report_objective.png",
         f"Final {objective} per config: the mean over the ok runs with its 95 % bootstrap "
         f"interval, n in the label.",
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


def report(sweep_dir: Path, pairs: str = "best") -> str:
    """Writes the report files into `sweep_dir`; returns the text for the terminal (tables and
    sentences, no pictures). `pairs`: compare each config with the best ("best") or every pair
    ("all")."""
    sweep_dir = Path(sweep_dir)
    runs = find_runs(sweep_dir, "**/status.json")
    if not runs:
        raise SystemExit(f"Error: no runs (folders with status.json) under {sweep_dir}. Pass the "
                         f"sweep dir that `python -m gan_experiments -m ...` printed.")
    shared = shared_settings(runs)
    mixed = measured_differently(runs, metric_columns(runs))
    rows, columns, objective = summarise(runs, shared, mixed)
    better = "higher" if higher_is_better(objective) else "lower"
    intro = (f"Mean ± std (n) [95 % bootstrap CI of the mean] over the runs whose status is ok; "
             f"below n = {comparison.BCA_MIN_N} the interval is the percentile bootstrap's, which "
             f"is too narrow for a handful of runs (at n = 2 it is their range). Interrupted, "
             f"diverged, failed, stopped and running runs are counted, never averaged in. The "
             f"median and the best of the n runs are single runs, not the mean. Sorted by "
             f"{objective}, {better} is better."
             + (f" Every run has {' '.join(sorted(shared))}." if shared else ""))
    sections = [("Results", [intro, results_table(rows, columns, objective, mixed)]),
                comparisons_section(rows, objective, pairs, mixed),
                measurement_section(runs, columns, mixed)]
    sections += filter(None, [reference_section(rows)])
    sections.append(("Figures", figure_blocks(sweep_dir, rows, objective, mixed)))
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
    parser.add_argument("--pairs", choices=["best", "all"], default="best",
                        help="compare each config with the best one (default), or every pair")
    args = parser.parse_args(argv)
    print(report(args.sweep_dir, args.pairs))
    written = [*args.sweep_dir.glob("report.*"), *args.sweep_dir.glob("report_*.png")]
    print(f"Written: {', '.join(str(p) for p in sorted(written))}")


if __name__ == "__main__":
    main()
