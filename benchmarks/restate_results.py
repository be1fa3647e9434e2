"""Restates RESULTS.md's earlier tables with the report's statistics (gan_experiments/comparison.py):
the 95 % bootstrap interval of each mean and each pair's test. Their run folders are gone, so
the per-seed values are the ones RESULTS.md printed (rounded to 2-4 digits there).

    python benchmarks/restate_results.py
"""

from gan_experiments import comparison
from gan_experiments.metrics.registry import higher_is_better

# table -> metric -> config -> the final value of seeds 0, 1, 2 (RESULTS.md's per-run tables)
TABLES = {
    "PacGAN 2D ring, 20,000 steps": {
        "modes": {"pack 1": [8, 7, 7], "pack 2": [8, 8, 7]},
        "hq": {"pack 1": [0.93, 0.74, 0.90], "pack 2": [0.88, 0.78, 0.71]},
        "reverse_kl": {"pack 1": [0.36, 0.24, 0.36], "pack 2": [0.09, 0.08, 0.29]},
    },
    "PacGAN 2D grid, 20,000 steps": {
        "modes": {"pack 1": [19, 15, 24], "pack 2": [21, 25, 22]},
        "hq": {"pack 1": [0.56, 0.51, 0.54], "pack 2": [0.41, 0.41, 0.36]},
    },
    "DCGAN loss study, 2,000 steps": {
        "fid_classifier": {"bce": [15.04, 20.68, 25.67], "smooth": [23.11, 19.44, 24.93],
                           "nonsat": [21.87, 21.83, 25.07]},
    },
}


def main() -> None:
    for table, metrics in TABLES.items():
        print(f"\n## {table}\n")
        print("| metric | config | mean ± std (n) [95 % CI] | against | difference [95 % CI] | "
              "Welch p (Holm) | P(beats) | verdict | seeds needed |")
        print("|---|---|---|---|---|---|---|---|---|")
        for metric, groups in metrics.items():
            maximise = higher_is_better(metric)
            summaries = {c: comparison.summarise(v, maximise) for c, v in groups.items()}
            best = max(summaries, key=lambda c: summaries[c].mean * (1 if maximise else -1))
            others = [c for c in groups if c != best]
            results = {r.a: r for r in comparison.compare(groups, [(c, best) for c in others], maximise)}
            for config, summary in summaries.items():
                r = results.get(config)
                cells = (["–"] * 6 if r is None else
                         [best, f"{r.difference:+.3g} [{r.ci[0]:+.3g}, {r.ci[1]:+.3g}]",
                          f"{r.welch_p:.2g} ({r.holm_p:.2g})", f"{r.p_improvement:.2f}", r.verdict,
                          str(r.seeds_needed or "–")])
                print(f"| {metric} | {config} | {summary.format(3)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
