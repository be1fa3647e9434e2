"""The runner as a user starts it: real Hydra, a subprocess, signals, and error paragraphs."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY, TINY_MODEL, run_cli

FAST = [*TINY, *TINY_MODEL["dcgan"]]


def test_run_writes_outputs_and_names_them(tmp_path):
    result = run_cli(*FAST, "loss=smooth", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    *_, finished, outputs, grid, view = result.stdout.strip().splitlines()
    assert finished.startswith("Run finished (ok, step 4): fid_classifier = ")
    assert grid == f"Sample grid: {tmp_path}/run/samples/step_000004.png"
    assert view == f"View it with: tensorboard --logdir {tmp_path}/run"
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "ok"
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_misspelt_key_fails_at_composition(tmp_path):
    result = run_cli("trainer.stepz=3", cwd=tmp_path)
    assert result.returncode == 1 and "stepz" in result.stderr
    result = run_cli("loss.penalty=gp", cwd=tmp_path)
    assert result.returncode == 1 and "expected one of [none, wgan_gp, r1]" in result.stderr


@pytest.mark.slow
def test_misspelt_key_in_a_users_yaml_fails_at_composition(tmp_path):
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "wide.yaml").write_text("defaults: [dcgan_schema]\ng_widht: 128\n")
    result = run_cli("--config-dir", str(tmp_path / "mine"), "model=wide", cwd=tmp_path)
    assert result.returncode == 1
    assert "Key 'g_widht' not in 'DCGANConfig'" in result.stderr


@pytest.mark.parametrize("args,expected,status", [
    (["data=mnist", "data.root=nowhere"], "data.download=true", "failed"),
    (["data.image_size=20"], "data.image_size", "failed"),
    (["data=folder", "data.path=empty"], "ImageFolder layout", "failed"),
    (["resume=true"], "no checkpoint at", None),  # refused starts write nothing
    (["trainer.device=cuda:0"], "trainer.device=auto", None),
    (["trainer.steps=0"], "trainer.steps must be at least 1", None),
])
@pytest.mark.slow
def test_bad_input_gets_one_paragraph_not_a_traceback(tmp_path, args, expected, status):
    (tmp_path / "empty").mkdir()
    result = run_cli(*FAST, *args, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    if args[0].startswith("trainer.device") and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    paragraph = result.stderr.strip().split("Error: ", 1)[1]
    assert "\n" not in paragraph
    if status is None:
        assert "Nothing was written" in result.stderr
        assert not (tmp_path / "run" / "status.json").exists()
        assert not (tmp_path / "run" / ".hydra").exists()
    else:
        assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == status


@pytest.mark.slow
def test_sigterm_leaves_a_loadable_checkpoint_and_resumes(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "gan_experiments", *FAST, "trainer.steps=100000",
         "trainer.checkpoint_every=100000", f"hydra.run.dir={run}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training has really started: its first grid
        if list(run.glob("samples/step_*.png")):
            break
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] > 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["gan"]["step"] == status["step"]
    resumed = run_cli(*FAST, f"trainer.steps={status['step'] + 2}", "trainer.checkpoint_every=100000",
                      "resume=true", f"hydra.run.dir={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "status.json").read_text()) == {
        **json.loads((run / "status.json").read_text()), "status": "ok", "step": status["step"] + 2}


def test_readme_config_table_lists_every_option():
    readme = (ROOT / "README.md").read_text()
    for group in ("data", "model", "loss", "optimizer", "schedule", "trainer", "eval",
                  "hparams_search", "experiment", "hydra/launcher"):
        for option in (ROOT / "conf" / group).glob("*.yaml"):
            assert f"`{option.stem}`" in readme, f"{group}/{option.stem} missing from README"


@pytest.mark.slow
def test_ctrl_c_during_set_up_stops_within_seconds(tmp_path):
    """While the evaluation classifier trains (a long set-up), Ctrl-C stops the run at once:
    status interrupted at step 0, no traceback."""
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "gan_experiments", *FAST, f"eval.cache_dir={tmp_path}/cache",
         "eval.classifier_steps=1000000", f"hydra.run.dir={run}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while "Training the evaluation classifier" not in _read(run / "__main__.log"):
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    sent = time.time()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert time.time() - sent < 10, "the stop waited for the set-up to finish"
    assert process.returncode == 0 and "Traceback" not in err, err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] == 0 and status["value"] is None
    assert "Run finished (interrupted, step 0)" in out


def _read(path):
    return path.read_text() if path.exists() else ""
