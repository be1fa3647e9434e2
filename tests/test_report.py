"""The sweep report on fake sweeps written as real files: status.json, .hydra/, TensorBoard
event files and sample PNGs, as a sweep leaves them."""

import csv
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image

from gan_experiments import report
from gan_experiments.record import Measurement, RunRecord

PACGAN_REFERENCE = {
    "source": "Lin et al. 2018, PacGAN, Table 1 (10 runs per row)",
    "runs": 10,
    "row_key": "model.pack",
    "rows": {
        1: {"label": "GAN", "metrics": {"modes": [6.3, 0.5], "reverse_kl": [0.45, 0.05]}},
        2: {"label": "PacGAN2", "metrics": {"modes": [7.9, 0.1], "reverse_kl": [0.1, None]}},
    },
}
LUCIC_REFERENCE = {
    "source": "Lucic et al. 2018, Are GANs Created Equal?",
    "claim": "NS beats MM in FID",
    "better": "loss=nonsat",
    "worse": "loss=bce",
    "metric": "fid_classifier",
}


def measured(extractor="classifier CNN", weights="ab" * 32, generated=2500):
    """How a run records that it measured a metric (metrics/evaluator.py)."""
    return {"extractor": extractor, "weights_sha256": weights, "generated": generated,
            "real": "mnist_5k: 2500 of 5000 images, drawn with the run's seed"}


def write_run(sweep, overrides, status, objective="fid_classifier", metrics=None, config=None,
              curves=None, samples=False, how=None):
    """One job folder. `metrics`: name -> value (tagged metrics/<name>), measured as `how`
    says; `curves`: tag -> values logged at steps 0, 10, 20, ..."""
    run = sweep / ",".join(overrides)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or {"seed": 0}))
    tagged = {f"metrics/{k}": Measurement(v, 20, how) for k, v in (metrics or {}).items()}
    value = (metrics or {}).get(objective) if status == "ok" else None
    RunRecord(status, 20, 20, objective, value, tagged).write(run)
    if curves:
        with SummaryWriter(run) as writer:
            for tag, values in curves.items():
                for i, v in enumerate(values):
                    writer.add_scalar(tag, v, 10 * i)
    if samples:
        (run / "samples").mkdir()
        for step in (10, 20):
            save_image(torch.rand(16, 1, 8, 8), run / "samples" / f"step_{step:06d}.png", nrow=4)
    return run


def run_report(sweep, capsys) -> str:
    report.main([str(sweep)])
    return capsys.readouterr().out


@pytest.fixture
def loss_sweep(tmp_path):
    """2 losses x 2 ok seeds, plus an interrupted and a diverged run whose numbers must not
    count. The seeds log at different steps, as resumed runs do."""
    fid = {("nonsat", 0): 10.0, ("nonsat", 1): 20.0, ("bce", 0): 40.0, ("bce", 1): 44.0}
    for (loss, seed), value in fid.items():
        losses = [1.0 + seed, 0.8, 0.7] if seed == 0 else [1.2, 0.9, 0.6, 0.5]
        write_run(tmp_path, ["+experiment=loss_study", f"loss={loss}", f"seed={seed}"], "ok",
                  metrics={"fid_classifier": value, "class_coverage": 10},
                  curves={"loss/D": losses, "loss/G": losses[::-1],
                          "metrics/fid_classifier": [90.0, value]},
                  samples=True)
    write_run(tmp_path, ["+experiment=loss_study", "loss=nonsat", "seed=2"], "interrupted",
              metrics={"fid_classifier": 1000.0}, curves={"loss/D": [5.0, 5.0]}, samples=True)
    write_run(tmp_path, ["+experiment=loss_study", "loss=bce", "seed=2"], "diverged")
    return tmp_path


def test_only_ok_runs_are_averaged_the_rest_counted_apart(loss_sweep, capsys):
    printed = run_report(loss_sweep, capsys)
    assert "Every run has +experiment=loss_study." in printed  # said once, not in each name
    # n = 2 is below BCa's minimum: the percentile interval of two values is their range.
    assert "| loss=nonsat | 15 ± 7.1 (2) [10, 20] | 15 | 10 | 2 | 1 | 0 | 0 | 0 |" in printed
    assert "| loss=bce | 42 ± 2.8 (2) [40, 44] | 42 | 40 | 2 | 0 | 1 | 0 | 0 |" in printed
    assert "| loss=bce | loss=nonsat | +27 [+20, +34] | 0.082 | 0.082 | 0.00 | cannot tell at n = 2 |" in printed
    assert printed.index("loss=nonsat") < printed.index("loss=bce")  # lower FID first
    text = (loss_sweep / "report.csv").read_text()
    assert "nan" not in text.lower()
    rows = {r["config"]: r for r in csv.DictReader(text.splitlines())}
    nonsat = rows["loss=nonsat"]
    assert float(nonsat["value_mean"]) == pytest.approx(15.0)  # not (10 + 20 + 1000) / 3
    assert float(nonsat["metrics/fid_classifier_mean"]) == pytest.approx(15.0)
    assert (nonsat["ok"], nonsat["interrupted"], nonsat["value_n"]) == ("2", "1", "2")
    assert (nonsat["value_ci_low"], nonsat["value_ci_high"], nonsat["value_ci_method"]) == ("10.0", "20.0", "percentile")
    assert (nonsat["value_median"], nonsat["value_best"]) == ("15.0", "10.0")
    assert rows["loss=bce"]["diverged"] == "1"


def test_a_job_finished_by_a_rerun_stays_in_its_config(tmp_path, capsys):
    """Rerunning a sweep to finish a job may add overrides that leave the results alone
    (trainer.progress=False, resume=true); that job still belongs to its config."""
    write_run(tmp_path, ["loss=bce", "seed=0"], "ok", metrics={"fid_classifier": 3.0})
    write_run(tmp_path, ["loss=bce", "seed=1", "trainer.progress=False", "resume=true"], "ok",
              metrics={"fid_classifier": 5.0})
    # A key the sweep varies still tells configs apart, even one Hydra leaves out of dir names.
    write_run(tmp_path, ["loss=bce", "seed=0", "data.path=/other"], "ok", metrics={"fid_classifier": 9.0})
    printed = run_report(tmp_path, capsys)
    assert "Every run has loss=bce." in printed
    assert "| (defaults) | 4 ± 1.4 (2) [3, 5] | 4 | 3 | 2 |" in printed
    assert "| data.path=/other | 9 (1) | 9 | 9 | 1 |" in printed
    assert "progress" not in printed


def test_missing_values_are_empty_csv_cells(tmp_path, capsys):
    write_run(tmp_path, ["loss=bce", "seed=0"], "ok", metrics={"fid_classifier": 3.0})
    write_run(tmp_path, ["loss=hinge", "seed=0"], "failed")
    run_report(tmp_path, capsys)
    text = (tmp_path / "report.csv").read_text()
    assert "nan" not in text.lower()
    hinge = next(r for r in csv.DictReader(text.splitlines()) if r["config"] == "loss=hinge")
    assert hinge["value_mean"] == hinge["value_std"] == "" and hinge["failed"] == "1"


def test_figures_are_written_embedded_and_wide(loss_sweep, capsys):
    run_report(loss_sweep, capsys)
    markdown = (loss_sweep / "report.md").read_text()
    for name in ("report_curves.png", "report_objective.png", "report_samples.png"):
        assert f"]({name})" in markdown
        assert Image.open(loss_sweep / name).width >= 800
    page = (loss_sweep / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3
    assert "<table>" in page and "15 ± 7.1 (2) [10," in page
    # Self-contained: nothing else is fetched, whatever folder the page is opened from.
    assert not re.search(r'(src|href)="(?!data:)', page) and ".png" not in page


def test_a_sweep_without_events_or_samples_says_what_it_skipped(tmp_path, capsys):
    write_run(tmp_path, ["loss=bce", "seed=0"], "ok", metrics={"fid_classifier": 3.0})
    (tmp_path / "report_curves.png").write_bytes(b"from an older report")
    printed = run_report(tmp_path, capsys)
    assert "No learning curves" in printed and "No sample grids" in printed
    assert not (tmp_path / "report_curves.png").exists()
    assert (tmp_path / "report_objective.png").is_file()


def test_paper_reference_table(tmp_path, capsys):
    config = {"reference": PACGAN_REFERENCE, "seed": 0}
    ours = {1: [(6.0, 0.40), (6.4, 0.50)], 2: [(5.0, 0.06), (5.2, 0.08)]}  # (modes, reverse_kl)
    for pack, seeds in ours.items():
        for seed, (modes, kl) in enumerate(seeds):
            write_run(tmp_path, [f"model.pack={pack}", f"seed={seed}"], "ok", "reverse_kl",
                      metrics={"modes": modes, "reverse_kl": kl},
                      config={**config, "model": {"pack": pack}})
    write_run(tmp_path, ["model.pack=4", "seed=0"], "ok", "reverse_kl",
              metrics={"modes": 8.0, "reverse_kl": 0.0}, config={**config, "model": {"pack": 4}})
    write_run(tmp_path, ["model.pack=2", "seed=2"], "diverged", config={**config, "model": {"pack": 2}})
    printed = run_report(tmp_path, capsys)
    assert "## Against the paper" in printed and "Lin et al. 2018, PacGAN" in printed
    # pack=1: |6.2 - 6.3| = 0.1 <= 2 * sqrt(0.283²/2 + 0.5²/10) = 0.52
    assert re.search(r"\| model.pack=1 \| GAN \| modes \| 6.2 ± 0.28 \(2\) \[6, 6.4\] \| 6.3 ± 0.5 \| "
                     r"within 2 SE", printed)
    # pack=2: |5.1 - 7.9| = 2.8 > 2 * sqrt(0.141²/2 + 0.1²/10) = 0.23
    assert re.search(r"\| model.pack=2 \| PacGAN2 \| modes \| 5.1 ± 0.14 \(2\) \[5, 5.2\] \| 7.9 ± 0.1 \| "
                     r"outside 2 SE", printed)
    # A paper std of null leaves our SE alone: |0.07 - 0.1| = 0.03 > 2 * 0.0141 / sqrt(2) = 0.02
    assert re.search(r"\| model.pack=2 \| PacGAN2 \| reverse_kl \| 0.07 ± 0.014 \(2\) \[0.06, 0.08\] \| 0.1 \| "
                     r"outside 2 SE", printed)
    assert "none for model.pack=4" in printed
    assert "Against the paper" in (tmp_path / "report.html").read_text()


def test_paper_reference_with_one_run_gives_no_verdict(tmp_path, capsys):
    write_run(tmp_path, ["model.pack=1", "seed=0"], "ok", "reverse_kl",
              metrics={"modes": 6.0, "reverse_kl": 0.4},
              config={"reference": PACGAN_REFERENCE, "model": {"pack": 1}})
    assert "n=1, no verdict" in run_report(tmp_path, capsys)


NONSAT_FIDS = (10.0, 12.0, 14.0, 16.0, 18.0, 20.0)  # mean 15, std 3.74


@pytest.mark.parametrize("bce_fids, expected", [
    ((40.0, 42.0, 44.0, 46.0, 48.0, 50.0), "Ours agrees: loss=nonsat 15 ± 3.7 (6)"),
    ((14.0, 15.0, 16.0, 17.0, 18.0, 19.0), "Ours cannot tell them apart at n = 6 and 6: "
                                           "loss=nonsat 15 ± 3.7 (6)"),
    ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0), "Ours disagrees: loss=nonsat 15 ± 3.7 (6)"),
])
def test_ordering_claim(tmp_path, capsys, bce_fids, expected):
    for loss, fids in {"nonsat": NONSAT_FIDS, "bce": bce_fids}.items():
        for seed, fid in enumerate(fids):
            write_run(tmp_path, [f"loss={loss}", f"seed={seed}"], "ok",
                      metrics={"fid_classifier": fid}, config={"reference": LUCIC_REFERENCE})
    printed = run_report(tmp_path, capsys)
    assert 'Lucic et al. 2018, Are GANs Created Equal?: "NS beats MM in FID".' in printed
    assert expected in printed
    if "cannot tell" in expected:
        # Cohen's d = 1.5 / sqrt((3.74² + 1.87²) / 2) = 0.507: 63 seeds per loss for 80 % power.
        assert ("the difference -1.5 [95 % CI -4.5, +1.5], Welch p = 0.41, P(loss=nonsat beats "
                "loss=bce) = 0.62; our means order them as the paper does; about 63 seeds per loss "
                "would resolve") in printed


def test_ordering_claim_with_one_run_on_a_side_gives_no_verdict(tmp_path, capsys):
    for loss, seed, fid in (("nonsat", 0, 10.0), ("bce", 0, 40.0), ("bce", 1, 44.0)):
        write_run(tmp_path, [f"loss={loss}", f"seed={seed}"], "ok",
                  metrics={"fid_classifier": fid}, config={"reference": LUCIC_REFERENCE})
    assert ("No verdict with n=1 on a side: loss=nonsat 10 (1) vs loss=bce 42 ± 2.8 (2) [40, 44] in "
            "fid_classifier (lower is better); our means order them as the paper does.") in run_report(tmp_path, capsys)


def test_paper_spread_is_read_as_std_or_as_standard_error():
    from gan_experiments.report import paper_se

    assert paper_se(0.5, {"runs": 25}) == pytest.approx(0.1)  # a std over 25 runs
    assert paper_se(0.5, {"runs": 25, "spread": "se"}) == 0.5  # PacGAN's Table 1 prints the SE
    assert paper_se(None, {"runs": 25}) is None


def synthetic_sweep(sweep, n, how=None):
    """Three losses with known means (FID 20, 23, 23.2; std 2), n seeds each."""
    rng = np.random.default_rng(0)
    for loss, mean in (("nonsat", 20.0), ("bce", 23.0), ("smooth", 23.2)):
        for seed, value in enumerate(rng.normal(mean, 2.0, n)):
            write_run(sweep, [f"loss={loss}", f"seed={seed}"], "ok",
                      metrics={"fid_classifier": float(value)}, how=how or measured())


def test_a_known_difference_says_better_at_large_n_and_cannot_tell_at_n_2(tmp_path, capsys):
    synthetic_sweep(tmp_path / "large", 40)
    printed = run_report(tmp_path / "large", capsys)
    assert re.search(r"\| loss=bce \| loss=nonsat \| \+3\.\d+ \[\+2\.\d+, \+\d\.\d+\] \| [0-9.e-]+ \| "
                     r"[0-9.e-]+ \| 0\.[01]\d \| worse \| – \|", printed)
    assert "Holm-adjusted across the 2 pairs shown" in printed
    assert "BCa" in printed
    synthetic_sweep(tmp_path / "small", 2)
    printed = run_report(tmp_path / "small", capsys)
    assert re.search(r"\| loss=\w+ \| loss=\w+ \| .* \| cannot tell at n = 2 \| \d+ \|", printed)
    # Every pair on request: 3 pairs, Holm across all 3.
    report.main([str(tmp_path / "large"), "--pairs", "all"])
    printed = capsys.readouterr().out
    assert "Holm-adjusted across the 3 pairs shown" in printed
    assert "| loss=bce | loss=smooth |" in printed or "| loss=smooth | loss=bce |" in printed


def test_a_metric_measured_two_ways_is_flagged_and_not_averaged(tmp_path, capsys):
    synthetic_sweep(tmp_path, 3)
    # One more run whose classifier had other weights: its FID is another quantity.
    write_run(tmp_path, ["loss=nonsat", "seed=9"], "ok", metrics={"fid_classifier": 1.0},
              how=measured(weights="cd" * 32))
    printed = run_report(tmp_path, capsys)
    assert "**metrics/fid_classifier is not comparable across this sweep**" in printed
    assert "9 runs: " in printed and "1 run: " in printed and "cdcdcd" in printed
    assert "| loss=nonsat | not comparable | – | – | 4 |" in printed
    assert "No comparisons: fid_classifier was measured in different ways." in printed
    rows = {r["config"]: r for r in csv.DictReader((tmp_path / "report.csv").read_text().splitlines())}
    assert rows["loss=nonsat"]["value_mean"] == ""


def test_how_a_metric_was_measured_is_reported(tmp_path, capsys):
    synthetic_sweep(tmp_path, 2)
    printed = run_report(tmp_path, capsys)
    assert ("metrics/fid_classifier: classifier CNN, weights sha256 abababababababab…; 2500 "
            "generated samples against mnist_5k: 2500 of 5000 images") in printed


def test_a_paper_number_of_another_metric_is_not_comparable(tmp_path, capsys):
    reference = {**LUCIC_REFERENCE, "runs": 50, "rows": {
        "loss=bce": {"label": "MM GAN", "metrics": {"fid_inception": [9.8, 0.9]}},
        "loss=nonsat": {"label": "NS GAN", "metrics": {"fid_inception": [6.8, 0.5]}}}}
    for loss, fids in {"nonsat": (20.0, 22.0), "bce": (24.0, 25.0)}.items():
        for seed, fid in enumerate(fids):
            write_run(tmp_path, [f"loss={loss}", f"seed={seed}"], "ok",
                      metrics={"fid_classifier": fid}, config={"reference": reference})
    printed = run_report(tmp_path, capsys)
    assert ("| loss=nonsat | NS GAN | fid_inception | not comparable | 6.8 ± 0.5 | not comparable: "
            "the paper's fid_inception is not a metric these runs measured (ours: fid_classifier) |") in printed
    assert "| 21 ± " not in printed.split("Against the paper")[1]  # our FID is never beside theirs
    assert 'NS beats MM in FID".' in printed  # the ordering claim is still checked


def test_a_preset_can_declare_a_paper_number_not_comparable(tmp_path, capsys):
    reference = {**LUCIC_REFERENCE, "comparable": False, "why": "their best of a search", "rows": {
        "loss=nonsat": {"label": "NS GAN", "metrics": {"fid_classifier": [6.8, 0.5]}}}}
    for seed, fid in enumerate((20.0, 22.0)):
        write_run(tmp_path, ["loss=nonsat", f"seed={seed}"], "ok", metrics={"fid_classifier": fid},
                  config={"reference": reference})
    printed = run_report(tmp_path, capsys)
    # Even a metric of the same name is not set beside theirs.
    assert ("| loss=nonsat | NS GAN | fid_classifier | not comparable | 6.8 ± 0.5 | not comparable: "
            "their best of a search |") in printed


def test_configs_without_spread_that_differ_are_told_apart(tmp_path, capsys):
    for pack, modes in ((1, 7), (2, 8)):
        for seed in range(3):
            write_run(tmp_path, [f"model.pack={pack}", f"seed={seed}"], "ok", "modes",
                      metrics={"modes": modes})
    printed = run_report(tmp_path, capsys)
    # Welch's t is infinite without spread: scipy's p is 0, never "the means are equal".
    assert "| model.pack=1 | model.pack=2 | -1 [-1, -1] | 0 | 0 | 0.00 | worse | – |" in printed
