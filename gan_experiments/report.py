"""`python -m gan_experiments.report <sweep_dir>`: one table of a sweep, seeds aggregated.

Runs are grouped by their overrides minus `seed`; each group shows mean ± std over its
finished runs and n, diverged and failed runs are counted but not averaged in, and groups are
sorted by the sweep's objective. Writes report.md and report.csv into the sweep dir."""

import argparse
import csv
import math
import statistics
from pathlib import Path

from gan_experiments.sweep import find_runs

# Metrics where larger is better; every other objective is minimised.
MAXIMISED = {"modes", "hq", "class_coverage"}
FINISHED = ("ok", "interrupted")


def group_key(overrides: list[str]) -> str:
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("seed=", "hydra.", "resume="))]
    return ",".join(sorted(kept)) or "(defaults)"


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict]) -> tuple[list[dict], list[str], str]:
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(group_key(run["overrides"]), []).append(run)
    objective = next((r["status"].get("objective") for r in runs if r["status"].get("objective")), "loss_G")
    columns = sorted({k for r in runs for k, v in r["status"].items()
                      if k.startswith(("metrics/", "final/")) and isinstance(v, (int, float))})
    rows = []
    for key, members in groups.items():
        done = [r["status"] for r in members if r["status"].get("status") in FINISHED]
        row = {"config": key, "n": len(done),
               "diverged": sum(r["status"].get("status") == "diverged" for r in members),
               "failed": sum(r["status"].get("status") == "failed" for r in members)}
        row["objective"] = mean_std([s.get("value", math.nan) for s in done])
        for column in columns:
            row[column] = mean_std([s.get(column, math.nan) for s in done])
        rows.append(row)
    sign = -1 if objective in MAXIMISED else 1
    rows.sort(key=lambda r: (math.isnan(r["objective"][0]), sign * r["objective"][0]
                             if not math.isnan(r["objective"][0]) else 0))
    return rows, columns, objective


def fmt(pair: tuple[float, float]) -> str:
    mean, std = pair
    return "–" if math.isnan(mean) else f"{mean:.4g} ± {std:.2g}"


def render(rows, columns, objective) -> tuple[str, list[list[str]]]:
    header = ["config", f"{objective} ({'max' if objective in MAXIMISED else 'min'})", "n",
              "diverged", "failed", *columns]
    table = [[r["config"], fmt(r["objective"]), str(r["n"]), str(r["diverged"]), str(r["failed"]),
              *(fmt(r[c]) for c in columns)] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table]
    return "\n".join(lines), [header, *table]


def report(sweep_dir: Path) -> str:
    runs = find_runs(sweep_dir, "**/status.json")
    if not runs:
        raise SystemExit(f"Error: no runs (folders with status.json) under {sweep_dir}. Pass the "
                         f"sweep dir that `python -m gan_experiments -m ...` printed.")
    rows, columns, objective = summarise(runs)
    markdown, cells = render(rows, columns, objective)
    Path(sweep_dir, "report.md").write_text(f"# Sweep report: {sweep_dir}\n\n{markdown}\n")
    with open(Path(sweep_dir, "report.csv"), "w", newline="") as f:
        csv.writer(f).writerows(cells)
    return markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gan_experiments.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    print(report(args.sweep_dir))
    print(f"\nWritten: {args.sweep_dir / 'report.md'}, {args.sweep_dir / 'report.csv'}")


if __name__ == "__main__":
    main()
