"""How sure a comparison across seeds is: a bootstrap interval for each config's mean, and for
each pair of configs the difference with its interval, Welch's t-test, the probability of
improvement, a Holm correction across the pairs shown, a verdict in words, and the seeds per
config that would resolve an unresolved difference.

Each value is one finished run's metric (one seed); runs are independent samples. The
statistics come from scipy.stats and statsmodels; this module only decides which to use."""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

CONFIDENCE = 0.95  # of every interval
ALPHA = 0.05  # family-wise error rate of the verdicts (Holm) and the power analysis's level
POWER = 0.80  # of seeds_needed
# BCa (Efron 1987) corrects the percentile interval for bias and skew, but its acceleration is a
# jackknife estimate that is noise below about 10 values; there the percentile interval is used.
BCA_MIN_N = 10
RESAMPLES = 9999
SEED = 0  # the bootstrap's own RNG: a report says the same thing every time it is written


def _finite(values) -> np.ndarray:
    array = np.asarray([v for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


def bootstrap_method(*sizes: int) -> str:
    return "BCa" if min(sizes) >= BCA_MIN_N else "percentile"


def _bootstrap(samples: tuple[np.ndarray, ...], statistic) -> tuple[float, float, str]:
    method = bootstrap_method(*(len(s) for s in samples))
    if all(np.ptp(s) == 0 for s in samples):  # no spread: every resample gives the same value
        value = float(statistic(*samples, axis=-1))
        return value, value, method
    with warnings.catch_warnings():
        # A tiny n makes scipy warn that the interval may be inaccurate: the report says which
        # method and n it used instead.
        warnings.simplefilter("ignore")
        result = stats.bootstrap(samples, statistic, confidence_level=CONFIDENCE,
                                 n_resamples=RESAMPLES, method=method.lower(),
                                 rng=np.random.default_rng(SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high), method


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _mean_difference(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


@dataclass(frozen=True)
class Summary:
    """One config's values over its seeds. `ci` is the 95 % bootstrap interval of the mean
    (None for n < 2); `best` and `median` are of the n runs, never the mean."""
    mean: float
    std: float | None  # sample std (ddof 1); None for one run
    n: int
    ci: tuple[float, float] | None
    method: str | None  # "BCa" or "percentile"
    median: float
    best: float
    values: tuple[float, ...]

    def format(self, digits: int = 4) -> str:
        """`mean ± std (n) [low, high]`, as in the report's cells."""
        spread = "" if self.std is None else f" ± {self.std:.2g}"
        ci = "" if self.ci is None else f" [{self.ci[0]:.{digits}g}, {self.ci[1]:.{digits}g}]"
        return f"{self.mean:.{digits}g}{spread} ({self.n}){ci}"


def summarise(values, higher_is_better: bool) -> Summary | None:
    """Mean, std, n, 95 % bootstrap CI of the mean, median and best of a config's values.
    Non-finite values and None are left out; returns None when nothing is left."""
    x = _finite(values)
    if len(x) == 0:
        return None
    ci, method = None, None
    if len(x) > 1:
        low, high, method = _bootstrap((x,), _mean)
        ci = (low, high)
    return Summary(float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else None, len(x), ci,
                   method, float(np.median(x)), float(x.max() if higher_is_better else x.min()),
                   tuple(float(v) for v in x))


def mean_ci(values) -> tuple[float, float] | None:
    """The 95 % bootstrap interval of the mean alone, for bands and error bars."""
    x = _finite(values)
    return _bootstrap((x,), _mean)[:2] if len(x) > 1 else None


def mean_cis(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 95 % bootstrap interval of the mean of each column of `grid` (seeds × steps), for a
    learning curve's band; a column without spread gets its mean as both ends."""
    grid = np.asarray(grid, dtype=float)
    mean = grid.mean(axis=0)
    if len(grid) < 2:
        return mean, mean
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        result = stats.bootstrap((grid,), _mean, axis=0, confidence_level=CONFIDENCE,
                                 n_resamples=RESAMPLES, method=bootstrap_method(len(grid)).lower(),
                                 batch=200, rng=np.random.default_rng(SEED))
    low, high = result.confidence_interval
    flat = np.ptp(grid, axis=0) == 0
    return np.where(flat | ~np.isfinite(low), mean, low), np.where(flat | ~np.isfinite(high), mean, high)


def welch_p(a, b) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances; Welch 1947)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero variance on both sides gives nan, said as such
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def probability_of_improvement(a, b, higher_is_better: bool) -> float:
    """P(a run of `a` beats a run of `b`), ties counting half: the Mann-Whitney U statistic
    of `a` over n_a·n_b (U counts the pairs with a > b)."""
    u = stats.mannwhitneyu(a, b, alternative="two-sided").statistic / (len(a) * len(b))
    return float(u if higher_is_better else 1 - u)


def seeds_needed(a, b) -> int | None:
    """Seeds per config for a two-sided Welch/t-test at level ALPHA to detect the observed
    difference of means with power POWER, from Cohen's d with the pooled std. None when the
    observed difference is zero or the spread is unknown."""
    pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2) if min(len(a), len(b)) > 1 else 0
    difference = abs(np.mean(a) - np.mean(b))
    if pooled == 0 or difference == 0:
        return None
    analysis, effect = TTestIndPower(), difference / pooled
    if analysis.power(effect, nobs1=2, alpha=ALPHA, ratio=1.0) >= POWER:
        return 2  # the solver's search starts above this for a large effect and fails
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = analysis.solve_power(effect_size=effect, alpha=ALPHA, power=POWER, ratio=1.0,
                                 alternative="two-sided")
    return math.ceil(n) if math.isfinite(n) else None


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979) of p-values tested together; nan stays nan."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    known = np.isfinite(p)
    if known.any():
        adjusted[known] = multipletests(p[known], method="holm")[1]
    return adjusted.tolist()


@dataclass(frozen=True)
class Comparison:
    """Config `a` against config `b`: `difference` is mean(a) − mean(b) in the metric's units."""
    a: str
    b: str
    difference: float
    ci: tuple[float, float]
    method: str
    welch_p: float
    holm_p: float
    p_improvement: float  # P(a run of a beats a run of b)
    verdict: str  # "better", "worse" (a against b) or "cannot tell at n = …"
    seeds_needed: int | None  # per config, for an unresolved pair


def compare(groups: dict[str, list[float]], pairs: list[tuple[str, str]],
            higher_is_better: bool) -> list[Comparison]:
    """Each pair (a, b) of configs, Holm-adjusted across `pairs`. A pair is "better" or
    "worse" when its Holm-adjusted Welch p is below ALPHA; each side needs 2 runs or more."""
    values = {name: _finite(v) for name, v in groups.items()}
    pairs = [(a, b) for a, b in pairs if len(values[a]) > 1 and len(values[b]) > 1]
    p = [welch_p(values[a], values[b]) for a, b in pairs]
    results = []
    for (a, b), p_raw, p_holm in zip(pairs, p, holm(p), strict=True):
        x, y = values[a], values[b]
        difference = float(x.mean() - y.mean())
        low, high, method = _bootstrap((x, y), _mean_difference)
        if math.isfinite(p_holm) and p_holm < ALPHA:
            a_ahead = difference > 0 if higher_is_better else difference < 0
            verdict, needed = ("better" if a_ahead else "worse"), None
        else:
            sizes = f"{len(x)}" if len(x) == len(y) else f"{len(x)} and {len(y)}"
            verdict, needed = f"cannot tell at n = {sizes}", seeds_needed(x, y)
        results.append(Comparison(a, b, difference, (low, high), method, p_raw, p_holm,
                                  probability_of_improvement(x, y, higher_is_better), verdict,
                                  needed))
    return results
