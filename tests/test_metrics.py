"""Metrics on distributions with known answers, the classifier cache, Inception's offline skip,
sweep reports and sample export."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import from_conf, read_events, tiny_cfg, train
from gan_experiments import data, sample
from gan_experiments.lifecycle import StartRefused
from gan_experiments.metrics import classifier, manifold
from gan_experiments.metrics.evaluator import Evaluator
from gan_experiments.metrics.frechet import frechet_distance
from gan_experiments.metrics.modes import mode_metrics


def test_real_ring_samples_cover_every_mode():
    torch.manual_seed(0)
    ring = from_conf("data=ring")
    result = mode_metrics(ring.sample(2500), ring.centers, ring.std)
    assert result["modes"] == 8
    # The mass of a 2D Gaussian within 3 sigma is 1 - exp(-4.5) = 0.98889.
    assert result["hq"] == pytest.approx(1 - math.exp(-4.5), abs=0.006)
    assert result["reverse_kl"] < 0.01


def test_collapsed_samples_cover_one_mode():
    ring = from_conf("data=ring")
    collapsed = ring.centers[3].expand(2500, 2) + 0.001 * torch.randn(2500, 2)
    result = mode_metrics(collapsed, ring.centers, ring.std)
    assert result == {"modes": 1, "hq": 1.0, "reverse_kl": pytest.approx(math.log(8))}


def test_uniform_noise_is_low_quality():
    grid = from_conf("data=grid")
    noise = torch.rand(2500, 2) * 10 - 5
    result = mode_metrics(noise, grid.centers, grid.std)
    assert result["hq"] < 0.05


def test_frechet_distance_of_known_gaussians():
    torch.manual_seed(0)
    a = torch.randn(20000, 3)
    b = torch.randn(20000, 3) * 2 + 1
    # |mu|^2 = 3, Tr(I + 4I - 2*2I) = 3.
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    digits = from_conf("data=digits")
    model, accuracy = classifier.load_or_train(digits, cache, steps=600)
    return digits, model, accuracy, cache


def test_classifier_is_accurate_and_cached(digits_classifier):
    digits, model, accuracy, cache = digits_classifier
    assert accuracy > 0.9
    (cached,) = cache.glob("classifier-digits-*.pt")
    again, again_accuracy = classifier.load_or_train(digits, cache, steps=600)
    assert again_accuracy == accuracy
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def against_real_half(digits_classifier):
    """The classifier metrics against one random half of the real digits; the other half,
    (images in [-1, 1], labels), to measure."""
    digits, model, _, _ = digits_classifier
    real = data.to_signed_unit(digits.images)
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    half_a, half_b = order[:898], order[898:]
    metrics = classifier.ClassifierMetrics(model, real[half_a].split(500), digits.labels[half_a], torch.device("cpu"))
    return metrics, (real[half_b], digits.labels[half_b])


def test_classifier_fid_orders_real_noise(digits_classifier):
    metrics, (other_half, _) = against_real_half(digits_classifier)
    real_vs_real = metrics(other_half)
    real_vs_noise = metrics(torch.rand(len(other_half), 1, 16, 16) * 2 - 1)
    assert real_vs_real["fid_classifier"] * 10 < real_vs_noise["fid_classifier"]
    assert real_vs_real["class_coverage"] == 10 and real_vs_real["class_kl"] < 0.05
    assert real_vs_noise["class_kl"] > real_vs_real["class_kl"]


def test_precision_recall_density_coverage_equal_the_authors_prdc():
    """The authors' `prdc` package (Naeem et al.) on the same features, at the ks the issue names
    (3 for precision and recall as Kynkäänniemi et al. and torch-fidelity, 5 for density and
    coverage); a small block exercises the chunked distances."""
    prdc = pytest.importorskip("prdc")
    rng = np.random.default_rng(0)
    real = rng.normal(size=(700, 16))
    fake = rng.normal(0.3, 1.2, size=(600, 16))
    ours = manifold.precision_recall_density_coverage(torch.from_numpy(real), torch.from_numpy(fake), 3, 5, block=97)
    assert manifold.precision_recall_density_coverage(torch.from_numpy(real), torch.from_numpy(fake), 3, 5) == ours
    at_3 = prdc.compute_prdc(real, fake, nearest_k=3)
    at_5 = prdc.compute_prdc(real, fake, nearest_k=5)
    expected = {"precision": at_3["precision"], "recall": at_3["recall"],
                "density": at_5["density"], "coverage": at_5["coverage"]}
    assert ours == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["default", "avx2", None])
def test_the_k_nn_metrics_resident_memory_stays_bounded_on_every_cpu_kernel(capability):
    """Peak resident growth of precision/recall/density/coverage at 20,000 x 128-d features, in
    a fresh process, under each of ATen's CPU kernel sets (None: this CPU's own). A fresh
    distance block per step fragmented the C heap, by how much depending on the kernels'
    allocations: under `default`, 472 and 3,147 MB in two runs here at 20,000 (a CI run grew by
    19 GB at 50,000, on its CPU's own kernels); 103 MB with one buffer under each set."""
    import os
    import subprocess
    import sys

    script = ("import resource, torch\n"
              "from gan_experiments.metrics.manifold import precision_recall_density_coverage\n"
              "torch.set_num_threads(2)\n"
              "g = torch.Generator().manual_seed(0)\n"
              "real, fake = torch.randn(20000, 128, generator=g), torch.randn(20000, 128, generator=g)\n"
              "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
              "before = peak()\n"
              "precision_recall_density_coverage(real, fake)\n"
              "print(peak() - before)\n")
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    # The features in float64 (2 x 20 MB), the radii, one 16 MB block and its mask.
    assert float(result.stdout) < 250, result.stdout


def test_kid_equals_torchmetrics_kernel_inception_distance():
    """With one subset of every sample, both are the unbiased MMD² of the whole sets: no
    sampling left to differ in."""
    from torchmetrics.image.kid import KernelInceptionDistance

    from gan_experiments.metrics.inception import PrecomputedFeatures

    generator = torch.Generator().manual_seed(0)
    real, fake = torch.randn(300, 32, generator=generator), torch.randn(300, 32, generator=generator) * 1.1 + 0.1
    features = PrecomputedFeatures()
    features.num_features = 32
    reference = KernelInceptionDistance(feature=features, subsets=1, subset_size=300)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    expected = float(reference.compute()[0])
    assert manifold.kernel_distance(real, fake, subsets=1, subset_size=300) == pytest.approx(expected, rel=1e-5)
    # Unbiased: two samples of one distribution average near 0 (FID stays biased upwards).
    same = [manifold.kernel_distance(torch.randn(200, 32, generator=generator), torch.randn(200, 32, generator=generator),
                                     subsets=10, subset_size=100, generator=generator) for _ in range(20)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same)) + 1e-4


def test_frechet_distance_equals_pytorch_fid_formula():
    """pytorch-fid's calculate_frechet_distance: scipy.linalg.sqrtm of the covariances' product."""
    from scipy import linalg

    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(500, 20, generator=generator), torch.randn(400, 20, generator=generator) * 1.3 + 0.2
    mu1, mu2 = a.double().mean(0).numpy(), b.double().mean(0).numpy()
    s1, s2 = np.cov(a.double().numpy(), rowvar=False), np.cov(b.double().numpy(), rowvar=False)
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_classifier_score_is_the_inception_score_formula():
    ten = torch.eye(10).repeat(5, 1)  # confident and spread over 10 classes: the maximum
    assert classifier.classifier_score(ten) == pytest.approx(10.0)
    assert classifier.classifier_score(torch.eye(10)[[3] * 50]) == pytest.approx(1.0)  # one class
    probabilities = torch.softmax(torch.randn(64, 10, generator=torch.Generator().manual_seed(2)), 1).double()
    marginal = probabilities.mean(0)
    expected = math.exp(np.mean([float((p * (p / marginal).log()).sum()) for p in probabilities]))
    assert classifier.classifier_score(probabilities) == pytest.approx(expected)


def test_quality_and_diversity_read_apart_on_real_digits(digits_classifier):
    """A held-out half of the real digits against the other half: all four near 1. A
    'generator' that returns one class only: precise (its samples look real) but recall and
    coverage near 0 (it misses the other nine classes), which FID alone cannot tell apart."""
    metrics, (other_half, labels) = against_real_half(digits_classifier)
    halves = metrics(other_half)
    assert min(halves[f"{m}_classifier"] for m in ("precision", "recall", "coverage")) > 0.85
    assert 0.8 < halves["density_classifier"] < 1.25
    one_class = metrics(other_half[labels == 1])
    assert one_class["precision_classifier"] > 0.85
    assert one_class["recall_classifier"] < 0.2 and one_class["coverage_classifier"] < 0.2
    assert one_class["classifier_score"] < 1.5 < halves["classifier_score"]
    assert halves["kid_classifier"] < one_class["kid_classifier"]


def test_inception_is_skipped_with_one_message_when_weights_are_missing(tmp_path, caplog):
    cfg = tiny_cfg(f"eval.cache_dir={tmp_path}", f"eval.inception_weights={tmp_path}/absent.pth",
                   "eval.classifier_steps=50")
    evaluator = Evaluator(cfg.eval, data.digits(image_size=8), 8, torch.device("cpu"), 0)
    skipped = [r for r in caplog.records if "Inception FID/KID skipped" in r.getMessage()]
    assert len(skipped) == 1 and "absent.pth" in skipped[0].getMessage()
    assert "fid_inception" not in evaluator.names and "fid_classifier" in evaluator.names


def test_each_metric_records_how_it_was_measured(digits_classifier, tmp_path):
    digits, model, _, cache = digits_classifier
    cfg = tiny_cfg(f"eval.cache_dir={cache}", f"eval.inception_weights={tmp_path}/absent.pth",
                   "eval.classifier_steps=600", "eval.num_samples=300")
    evaluator = Evaluator(cfg.eval, digits, 8, torch.device("cpu"), 0)
    how = evaluator.methods["fid_classifier"]
    assert how == evaluator.methods["class_coverage"]
    # The k of the k-NN balls and KID's subsets are recorded with each value, from the registry.
    assert evaluator.methods["precision_classifier"]["k"] == 3 and evaluator.methods["coverage_classifier"]["k"] == 5
    assert evaluator.methods["kid_classifier"]["subsets"] == 100
    assert how["weights_sha256"] == classifier.weights_sha256(model)  # the cached model's weights
    assert how["generated"] == 300 and how["real"].startswith(f"digits: 300 of {len(digits)} images")
    assert "classifier" in how["extractor"]
    # Other weights, another hash: the report will not average the two.
    other = classifier.Classifier(1, 10)
    other.load_state_dict(model.state_dict())
    other.head.bias.data += 1
    assert classifier.weights_sha256(other) != how["weights_sha256"]


def test_run_writes_metrics_everywhere(tmp_path):
    summary = train(tiny_cfg("data=ring", "eval.every=2", "eval.num_samples=500", "trainer.ema_decay=0.5",
                             model="mlp"), tmp_path)
    saved = json.loads((tmp_path / "status.json").read_text())["metrics"]
    assert {"metrics/modes", "metrics/hq", "metrics/reverse_kl", "metrics_ema/modes"} <= saved.keys()
    assert saved["metrics/reverse_kl"]["step"] == 4  # every metric carries its step
    assert "mixture's modes" in saved["metrics/reverse_kl"]["method"]["extractor"]  # and its protocol
    assert saved["metrics/reverse_kl"]["method"]["generated"] == 500
    assert summary["objective"] == "reverse_kl" and summary["value"] == saved["metrics/reverse_kl"]["value"]
    events = read_events(tmp_path)
    assert [e.step for e in events.Scalars("metrics/hq")] == [2, 4]
    assert "metrics_ema/reverse_kl" in events.Tags()["scalars"]


def test_objective_can_be_chosen_and_is_checked(tmp_path):
    summary = train(tiny_cfg("data=ring", "eval.objective=hq", model="mlp"), tmp_path / "a")
    assert summary["value"] == summary["metrics"]["metrics/hq"]["value"]
    # A misspelt metric, or one this data does not give (the classifier's, on 2D points), is
    # refused before the start, naming what the run measures.
    for name in ("fid", "fid_classifier"):
        with pytest.raises(StartRefused, match=f"eval.objective={name} is not measured by this run; "
                                               f"choose one of reverse_kl, modes, hq, loss_G, loss_D, or auto"):
            train(tiny_cfg("data=ring", f"eval.objective={name}", model="mlp"), tmp_path / name)
        assert not (tmp_path / name).exists()


def test_sample_export_round_trips(tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg("trainer.ema_decay=0.5"), run)
    generator = sample.load_generator(run)
    sample.main([str(run), "-n", "10", "--seed", "3", "--npz", str(tmp_path / "s.npz")])
    saved = np.load(tmp_path / "s.npz")["samples"]
    assert saved.shape == (10, 1, 8, 8)
    assert np.allclose(saved, sample.draw(generator, 10, 3).numpy())
    sample.main([str(run), "-n", "5", "--images", str(tmp_path / "imgs"), "--ema"])
    images = sorted((tmp_path / "imgs").glob("*.png"))
    assert len(images) == 5 and Image.open(images[0]).size == (8, 8)
    sample.main([str(run)])
    assert Image.open(run / "sample_grid.png").width >= 512  # 8x8 digits, scaled up to be seen
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(SystemExit, match="no checkpoint"):
        sample.main([str(run)])


def test_the_default_datas_classifier_ships_and_is_hash_checked(tmp_path, caplog, monkeypatch):
    """mnist_5k's classifier comes from the package (no minute of training, nothing cached);
    a damaged copy is not used."""
    digits5k = from_conf("data=mnist_5k", cache_dir=str(tmp_path / "data-cache"))
    model, accuracy = classifier.load_or_train(digits5k, tmp_path / "cache", steps=1000)
    assert accuracy == pytest.approx(0.976, abs=1e-3)
    assert not (tmp_path / "cache").exists()  # read from the package, so nothing was trained
    x = data.to_signed_unit(digits5k.images[:500])
    assert (model(x).argmax(1) == digits5k.labels[:500]).float().mean() > 0.95

    (name, digest), = classifier.SHIPPED.items()
    assert classifier.file_sha256(classifier.SHIPPED_DIR / name) == digest
    damaged = tmp_path / "weights"
    damaged.mkdir()
    (damaged / name).write_bytes((classifier.SHIPPED_DIR / name).read_bytes()[:-10])
    monkeypatch.setattr(classifier, "SHIPPED_DIR", damaged)
    assert classifier.shipped_path(name.removeprefix("classifier-").removesuffix(".pt")) is None
    assert "does not match its sha256" in caplog.text


def test_one_registry_says_which_way_each_metric_is_better():
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from gan_experiments.metrics import registry
    from gan_experiments.record import RunRecord
    from gan_experiments.report import summarise
    from gan_experiments.sweep import Run

    assert registry.higher_is_better("modes") and registry.higher_is_better("metrics/class_coverage")
    assert not registry.higher_is_better("fid_classifier") and not registry.higher_is_better("final/loss_G")
    assert registry.auto_objective(["modes", "hq", "reverse_kl", "loss_G"]) == "reverse_kl"
    assert registry.auto_objective(["loss_G", "loss_D"]) == "loss_G"
    for objective, way in (("modes", "maximize"), ("auto", "minimize"), ("fid_classifier", "minimize")):
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=["hparams_search=optuna", f"eval.objective={objective}"],
                          return_hydra_config=True)
        assert cfg.hydra.sweeper.direction == way
    # The report sorts the most modes first.
    runs = [Run(Path(f"r{i}"), [f"loss={loss}"], RunRecord("ok", 4, 4, "modes", v))
            for i, (loss, v) in enumerate((("bce", 3), ("nonsat", 8)))]
    rows, _, _ = summarise(runs)
    assert [r.config for r in rows] == ["loss=nonsat", "loss=bce"]


@pytest.mark.slow
def test_inception_fid_and_kid_take_one_pass_and_equal_torchmetrics_own(random_inception_weights):
    """One Inception pass per image feeds both metrics; the values equal torchmetrics' FID and
    KID, each running its own Inception over the same images (random weights in the layout
    torch-fidelity loads: the real ones need a download)."""
    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
    from torchmetrics.image.kid import KernelInceptionDistance

    from gan_experiments.metrics.inception import InceptionMetrics, as_rgb_uint8

    generator = torch.Generator().manual_seed(0)
    real, fake = (torch.rand(40, 1, 16, 16, generator=generator) * 2 - 1 for _ in range(2))
    ours = InceptionMetrics(random_inception_weights, real.split(16), torch.device("cpu"))
    calls = []
    ours.extractor.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    result = ours(fake)
    assert sum(calls) == len(fake)  # each generated image through Inception once

    extractor = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(random_inception_weights))
    fid = FrechetInceptionDistance(feature=extractor)
    kid = KernelInceptionDistance(feature=extractor, subset_size=40)
    for metric in (fid, kid):
        metric.update(as_rgb_uint8(real), real=True)
        metric.update(as_rgb_uint8(fake), real=False)
    torch.manual_seed(0)
    theirs_kid = float(kid.compute()[0])
    assert result["fid_inception"] == pytest.approx(float(fid.compute()), rel=1e-6)
    assert result["kid_inception"] == pytest.approx(theirs_kid, rel=1e-5, abs=1e-9)


@pytest.mark.slow
def test_the_inception_path_equals_torch_fidelity_end_to_end(random_inception_weights):
    """torch-fidelity on the same images (as uint8 RGB, which both feed Inception) and the same
    weights file: the same FID, KID (one subset of every image, so no sampling differs) and
    precision and recall (k = 3)."""
    import torch_fidelity

    from gan_experiments.metrics.inception import InceptionMetrics, as_rgb_uint8

    generator = torch.Generator().manual_seed(0)
    real, fake = torch.rand(24, 1, 16, 16, generator=generator) * 2 - 1, torch.rand(24, 1, 16, 16, generator=generator)
    ours = InceptionMetrics(random_inception_weights, real.split(16), torch.device("cpu"))
    ours.kid = type(ours.kid)(feature=ours.kid.inception, reset_real_features=False, subsets=100, subset_size=24)
    ours.kid.update(ours.real_features, real=True)
    result = ours(fake)

    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = as_rgb_uint8(images)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i]

    theirs = torch_fidelity.calculate_metrics(
        input1=Images(fake), input2=Images(real), cuda=False, fid=True, kid=True, prc=True, verbose=False,
        feature_extractor="inception-v3-compat", feature_layer_prc="2048",  # its default for prc is VGG16
        feature_extractor_weights_path=str(random_inception_weights), kid_subsets=1, kid_subset_size=24)
    assert result["fid_inception"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert result["kid_inception"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4, abs=1e-9)
    assert result["precision_inception"] == pytest.approx(theirs["precision"], abs=1e-6)
    assert result["recall_inception"] == pytest.approx(theirs["recall"], abs=1e-6)


def test_the_sampler_names_a_sweeps_runs_and_refuses_a_bad_count(tmp_path, capsys):
    """Pointed at a sweep's folder it spoke of resume=true and hydra.run.dir, which the user
    never passed; `-n -3` gave a raw traceback."""
    train(tiny_cfg("trainer.steps=2"), tmp_path / "sweep" / "seed=0")
    with pytest.raises(SystemExit) as refused:
        sample.main([str(tmp_path / "sweep")])
    said = str(refused.value)
    assert "holds a sweep" in said and "seed=0" in said and "resume" not in said
    with pytest.raises(SystemExit) as refused:
        sample.main([str(tmp_path / "nothing")])
    assert "no checkpoint" in str(refused.value) and "resume" not in str(refused.value)
    with pytest.raises(SystemExit):
        sample.main([str(tmp_path / "sweep" / "seed=0"), "-n", "-3"])
    assert "-3 is not a number of samples" in capsys.readouterr().err


@pytest.mark.slow
def test_stacked_mnist_stacks_three_digits_and_counts_its_1000_modes():
    """Real stacks cover nearly all 1,000 modes in 26,000 samples with a KL near 0, as PacGAN's
    code counts them; a 'generator' of one stack has one mode and a KL of log 1000. The
    classifier is the digits' own (shipped for mnist_5k), applied to each channel."""
    from gan_experiments.metrics.stacked import StackedModeMetrics

    stacked = from_conf("data=stacked_mnist")
    assert stacked.shape == (3, 28, 28) and stacked.name == "stacked_mnist_5k"
    model, accuracy = classifier.load_or_train(stacked.digits, Path("/nonexistent"), steps=1000)  # the shipped one
    metrics = StackedModeMetrics(model, torch.device("cpu"))
    torch.manual_seed(0)
    real = metrics(stacked.sample(26000))
    assert real["stacked_modes"] > 990 and real["stacked_kl"] < 0.1, real
    one = metrics(stacked.sample(1).expand(500, -1, -1, -1))
    assert one["stacked_modes"] == 1 and one["stacked_kl"] == pytest.approx(math.log(1000))
    # The channels are independent digits: each channel's class histogram is the digits' own.
    channels = stacked.sample(3000)
    assert not torch.equal(channels[:, 0], channels[:, 1])


def test_a_stacked_mnist_run_reports_its_modes(tmp_path):
    from conftest import TINY, make_cfg

    tiny = [o for o in TINY if not o.startswith("data=")]
    cfg = make_cfg(*tiny, "data=stacked_mnist", "data.digits.image_size=8", "model=dcgan", "model.g_width=8",
                   "model.d_width=8", "model.latent_dim=8", "eval.num_samples=300")
    summary = train(cfg, tmp_path)
    assert summary["status"] == "ok" and summary["objective"] == "stacked_kl"
    assert {"metrics/stacked_modes", "metrics/stacked_kl"} <= summary["metrics"].keys()
    assert "fid_classifier" not in str(summary["metrics"])  # 1,000 stacked classes: no plain classifier
    assert "per channel" in summary["metrics"]["metrics/stacked_modes"]["method"]["extractor"]
