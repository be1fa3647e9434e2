"""Every metric a run can report, declared once: its name, which way is better, and which data
it is measured on. The evaluator's names, the `auto` objective, the report's sort and verdicts
and the Optuna sweeper's direction all derive from this table."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    family: str  # the metric function that measures it (metrics/evaluator.py), "loss" for losses
    headline: bool = False  # eval.objective=auto picks the first headline metric a run measures
    settings: tuple = ()  # (name, value) pairs the metric function reads, recorded with each value


# The nearest neighbours of the k-NN balls (metrics/manifold.py), as the authors set them.
K_PRECISION_RECALL, K_DENSITY_COVERAGE = 3, 5
# KID's subsets (Bińkowski et al. 2018; torchmetrics' and torch-fidelity's defaults).
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000


METRICS = {m.name: m for m in (
    # PacGAN's mode coverage on 2D mixtures (Lin et al. 2018, section 5.1).
    Metric("reverse_kl", False, "modes", headline=True),
    Metric("modes", True, "modes"),
    Metric("hq", True, "modes"),
    # Stacked MNIST's 1,000 modes, each channel classified (metrics/stacked.py; PacGAN Table 2).
    Metric("stacked_kl", False, "stacked", headline=True),
    Metric("stacked_modes", True, "stacked"),
    # The dataset's own classifier on labelled images (metrics/classifier.py).
    Metric("fid_classifier", False, "classifier", headline=True),
    Metric("class_coverage", True, "classifier"),
    Metric("class_kl", False, "classifier"),
    Metric("precision_classifier", True, "classifier", settings=(("k", K_PRECISION_RECALL),)),
    Metric("recall_classifier", True, "classifier", settings=(("k", K_PRECISION_RECALL),)),
    Metric("density_classifier", True, "classifier", settings=(("k", K_DENSITY_COVERAGE),)),
    Metric("coverage_classifier", True, "classifier", settings=(("k", K_DENSITY_COVERAGE),)),
    Metric("kid_classifier", False, "classifier",
           settings=(("subsets", KID_SUBSETS), ("subset_size", KID_SUBSET_SIZE))),
    # The Inception Score's formula (Salimans et al. 2016) with the dataset's own classifier.
    Metric("classifier_score", True, "classifier"),
    # Inception features (Heusel et al. 2017; Bińkowski et al. 2018), when the weights are on disk.
    Metric("fid_inception", False, "inception"),
    Metric("kid_inception", False, "inception"),
    Metric("precision_inception", True, "inception", settings=(("k", K_PRECISION_RECALL),)),
    Metric("recall_inception", True, "inception", settings=(("k", K_PRECISION_RECALL),)),
    Metric("density_inception", True, "inception", settings=(("k", K_DENSITY_COVERAGE),)),
    Metric("coverage_inception", True, "inception", settings=(("k", K_DENSITY_COVERAGE),)),
    # The last logged losses; measured by every run.
    Metric("loss_G", False, "loss"),
    Metric("loss_D", False, "loss"),
)}


def names(family: str) -> list[str]:
    """The metrics one metric function reports, in the table's order."""
    return [m.name for m in METRICS.values() if m.family == family]


def tag(name: str, generator: str = "") -> str:
    """The TensorBoard tag (and status.json key) of a metric: `metrics/<name>` for the trained
    generator, `metrics_ema/<name>` for its EMA (generator="_ema"), `final/<name>` for a loss."""
    if METRICS[name].family == "loss":
        return f"final/{name}"
    return f"metrics{generator}/{name}"


def higher_is_better(name: str) -> bool:
    """For a metric name or a TensorBoard tag (`metrics/modes`, `final/loss_G`); unknown names
    are minimised."""
    metric = METRICS.get(name.rsplit("/", 1)[-1])
    return metric.higher_is_better if metric else False


def auto_objective(measured: list[str]) -> str:
    """The headline metric among those a run measures, else G's loss."""
    return next((m.name for m in METRICS.values() if m.headline and m.name in measured), "loss_G")


def direction(objective: str) -> str:
    """`maximize` or `minimize`, as Optuna names them, for an eval.objective value. `auto` picks
    a headline metric, and every headline metric is minimised."""
    if objective == "auto":
        (way,) = {higher_is_better(m.name) for m in METRICS.values() if m.headline}
        return "maximize" if way else "minimize"
    return "maximize" if higher_is_better(objective) else "minimize"
