"""The runner as a user starts it: real Hydra, a subprocess, signals, and error paragraphs."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from conftest import ROOT, TINY, TINY_MODEL, make_cfg, run_cli

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
    result = run_cli("loss/penalty=gp", cwd=tmp_path)
    assert result.returncode == 1 and "Could not find 'loss/penalty/gp'" in result.stderr
    assert "r1" in result.stderr and "wgan_gp" in result.stderr  # the options it could be


@pytest.mark.slow
def test_misspelt_key_in_a_users_yaml_fails_at_composition(tmp_path):
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "wide.yaml").write_text("defaults: [dcgan_schema]\ng_widht: 128\n")
    result = run_cli("--config-dir", str(tmp_path / "mine"), "model=wide", cwd=tmp_path)
    assert result.returncode == 1
    assert "Key 'g_widht' not in 'DCGANConfig'" in result.stderr


@pytest.mark.parametrize("args,expected", [
    (["data=mnist", "data.root=nowhere"], "data.download=true"),
    (["data.image_size=20"], "data.image_size"),
    (["data=folder", "data.path=empty"], "ImageFolder layout"),
    (["resume=true"], "no checkpoint at"),
    (["trainer.device=cuda:0"], "trainer.device=auto"),
    (["trainer.steps=0"], "trainer.steps must be at least 1"),
    (["trainer.batch_size=1"], "Raise trainer.batch_size"),  # DCGAN's BatchNorm over one example
    (["loss.penalty.weight=1"], "loss/penalty=r1"),
    # sysfs refuses a new folder even to root: an unwritable cache, where the classifier must be
    # trained, was found at step 0 with the classifier's work lost
    (["eval.cache_dir=/sys/gan_experiments_cache"], "Point eval.cache_dir at a folder you can write"),
])
@pytest.mark.slow
def test_bad_input_gets_one_paragraph_not_a_traceback(tmp_path, args, expected):
    """Bad data, sizes, devices and settings are refused before the start: one paragraph that
    names the fix, and nothing written."""
    (tmp_path / "empty").mkdir()
    result = run_cli(*FAST, *args, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    if args[0].startswith("trainer.device") and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    paragraph = result.stderr.strip().split("Error: ", 1)[1]
    assert "\n" not in paragraph
    assert "Nothing was written" in result.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("where", [["hydra.run.dir=/sys/gan_experiments_run"],
                                   ["-m", "hydra/launcher=basic", "hydra.sweep.dir=/sys/gan_experiments_sweep"]],
                         ids=["run", "sweep"])
def test_an_output_folder_that_cannot_be_written_is_one_paragraph(tmp_path, where):
    """A read-only place (sysfs, even to root) for the run or the sweep: Hydra's raw OSError
    traceback, before any code of ours ran."""
    result = run_cli(*where, *FAST, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    key = where[-1].split("=")[0]
    assert f"{key}=/sys/gan_experiments_" in result.stderr and f"Point {key} at a folder you can write" in result.stderr


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
    for group in ("data", "model", "loss", "loss/penalty", "optimizer", "schedule", "trainer", "eval",
                  "hparams_search", "experiment", "logger", "hydra/launcher"):
        for option in (ROOT / "conf" / group).glob("*.yaml"):
            assert f"`{option.stem}`" in readme, f"{group}/{option.stem} missing from README"


def readme_config_rows() -> list[tuple[str, list[str], str]]:
    """The README's "Config groups" table as (group, options, text) rows; a row with an empty
    group cell continues the group above."""
    table = (ROOT / "README.md").read_text().split("### Config groups", 1)[1].split("### ", 1)[0]
    rows, group = [], ""
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("group", "---"):
            continue
        group = cells[0].strip("`") or group
        rows.append((group, re.findall(r"`([\w/]+)`", cells[1]), cells[2]))
    return rows


# `key` (value ...): a default as the README states it, e.g. `trainer.steps` (2000 generator steps)
README_DEFAULT = re.compile(r"`([\w.]+)` \((\[[^\]]*\]|`?[^\s;,)`]+`?)")
DEFAULTS_GROUPS = {"data", "model", "loss", "loss/penalty", "optimizer", "schedule", "trainer", "eval",
                   "top level"}


def _readme_value(text: str):
    text = text.strip("`")
    if text == "required":
        return "???"
    return yaml.safe_load(text.replace("e-", ".0e-") if re.fullmatch(r"\d+e-\d+", text) else text)


def test_readme_config_table_states_the_yaml_defaults():
    """Every `key` (default) in the README's table equals what conf/ composes for that option,
    and every key of the data, model, penalty, optimizer, trainer and eval options is listed:
    the YAML holds each default, the README is checked against it."""
    checked, rows = 0, readme_config_rows()
    for group, options, text in rows:
        if group not in DEFAULTS_GROUPS:
            continue
        for option in options if group != "top level" else [None]:
            # Unresolved, with enums as names and a required value as "???"
            values = OmegaConf.to_container(make_cfg(*[f"{group}={option}"] * bool(option)), enum_to_str=True)

            def lookup(key, values=values):
                for part in key.split("."):
                    values = values[part]
                return values

            for key, stated in README_DEFAULT.findall(text):
                full = f"optimizer.g.{key}" if group == "optimizer" and "." not in key else key
                assert lookup(full) == _readme_value(stated), (
                    f"README says {group}={option}: {key} ({stated}); conf/ has {lookup(full)!r}")
                checked += 1
            if group in ("data", "model", "loss/penalty", "optimizer", "trainer", "eval"):
                node = lookup(group.replace("/", "."))
                keys, prefix = (node["g"], "") if group == "optimizer" else (node, group.replace("/", ".") + ".")
                group_text = " ".join(t for g, _, t in rows if g == group)  # e.g. dcgan_small: dcgan's row
                missing = [k for k in keys if not k.startswith("_") and f"`{prefix}{k}`" not in group_text]
                assert not missing, f"README's {group} rows do not list {missing} of {group}={option}"
    assert checked > 60  # the table's defaults were found, not skipped


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
