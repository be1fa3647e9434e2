"""Every numeric key's range, declared once beside its type in config.py, walked at its
boundaries: the value just outside is refused by the runner's own entry point in one paragraph
naming the key, with the run folder left exactly as it was; the value at (or just inside) the
boundary composes and passes the same check."""

import dataclasses
import runpy
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CONF, TINY, make_cfg, run_cli, tree_snapshot
from gan_experiments import config
from gan_experiments.config import SCHEMAS, Range, out_of_range

EPS = 1e-6


def option_of(group: str, schema_name: str) -> str:
    """An option of `group` in conf/ whose defaults list names `schema_name`."""
    for path in sorted((CONF / group).glob("*.yaml")):
        if schema_name in str(yaml.safe_load(path.read_text()).get("defaults", [])):
            return path.stem
    raise AssertionError(f"no option of {group} uses {schema_name}")


def ranged_keys():
    """(option override, dotted key, Range, is_int, is_list) for every declared range."""
    cases = []
    for group, name, node in [(None, None, config.Config), *SCHEMAS]:
        fields = {f.name: f for f in dataclasses.fields(node)}
        # conf/optimizer and conf/schedule hold a g and a d entry of one schema (config._g_and_d).
        pair = set(fields) == {"g", "d"}
        inner = dataclasses.fields(fields["d"].default_factory) if pair else dataclasses.fields(node)
        prefix = "" if group is None else group.replace("/", ".") + ".d." * pair + "." * (not pair)
        option = [] if group is None else [f"{group}={option_of(group, name)}"]
        option += ["data.path=images"] * (option == ["data=folder"])  # it has no default
        for f in inner:
            if "range" in f.metadata:
                kind = str(f.type)
                cases.append((option, prefix + f.name, f.metadata["range"], "int" in kind and "float" not in kind,
                              "list" in kind))
    return cases


def boundary_values(r: Range, is_int: bool) -> list[tuple[float, bool]]:
    """(value, admitted) pairs at each end of the range."""
    step = 1 if is_int else EPS
    values = [(r.low + step if r.open_low else r.low, True), (r.low if r.open_low else r.low - step, False)]
    if r.high is not None:
        values += [(r.high - step if r.open_high else r.high, True), (r.high if r.open_high else r.high + step, False)]
    return values


CASES = [(option, key, value, admitted, is_list)
         for option, key, r, is_int, is_list in ranged_keys() for value, admitted in boundary_values(r, is_int)]


def as_override(key: str, value, is_list: bool) -> str:
    return f"{key}=[{value},{value}]" if is_list else f"{key}={value}"


def test_every_group_declares_its_ranges():
    keys = {key for _, key, *_ in ranged_keys()}
    assert {"trainer.steps", "eval.num_samples", "optimizer.d.lr", "optimizer.d.betas", "model.latent_dim",
            "loss.penalty.weight", "schedule.d.T_max", "data.std", "seed"} <= keys
    assert len(CASES) > 100


@pytest.mark.parametrize("option,key,value,admitted,is_list",
                         [c for c in CASES if c[3]], ids=lambda v: str(v) if not isinstance(v, list) else "")
def test_a_value_at_its_boundary_passes(option, key, value, admitted, is_list):
    assert out_of_range(make_cfg(*option, as_override(key, value, is_list))) == []


def run_entry_point(monkeypatch, args: list[str]) -> str:
    """`python -m gan_experiments <args>` in this process (runpy runs the package's __main__
    as the interpreter does): Hydra's argument parsing and callbacks included. Returns what it
    exits with."""
    monkeypatch.setattr(sys, "argv", ["gan_experiments", *args])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("gan_experiments", run_name="__main__", alter_sys=True)
    return str(exit_.value.code)


@pytest.mark.parametrize("option,key,value,admitted,is_list",
                         [c for c in CASES if not c[3]], ids=lambda v: str(v) if not isinstance(v, list) else "")
def test_a_value_outside_its_range_is_refused_naming_it(tmp_path, monkeypatch, option, key, value, admitted, is_list):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("an earlier run's file")
    before = tree_snapshot(tmp_path)
    message = run_entry_point(monkeypatch, [*option, as_override(key, value, is_list), f"hydra.run.dir={run}"])
    paragraph = message.strip()
    assert paragraph.startswith("Error: ") and "\n" not in paragraph
    assert f"{key} must be " in paragraph and "Nothing was written" in paragraph
    assert tree_snapshot(tmp_path) == before


def test_a_range_of_a_users_own_option_is_checked(tmp_path, monkeypatch):
    """A --config-dir option that extends a schema has the schema's ranges."""
    (tmp_path / "conf" / "optimizer").mkdir(parents=True)
    option = yaml.safe_load((CONF / "optimizer" / "adam.yaml").read_text())
    option["d"]["lr"] = -0.1
    (tmp_path / "conf" / "optimizer" / "mine.yaml").write_text(yaml.safe_dump(option))
    message = run_entry_point(monkeypatch, ["--config-dir", str(tmp_path / "conf"), "optimizer=mine",
                                            f"hydra.run.dir={tmp_path / 'run'}"])
    assert "optimizer.d.lr must be above 0, got -0.1" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,named", [
    # Used to train, then die in linalg.eigh at the final evaluation: status failed, no checkpoint.
    (["eval.num_samples=1"], "eval.num_samples must be at least 6, got 1"),
    # Used to be torch's raw ValueError, not naming the key, leaving a .lock behind.
    (["optimizer.d.lr=-2e-4"], "optimizer.d.lr must be above 0, got -0.0002"),
])
def test_the_reported_cases_are_refused_by_the_command(tmp_path, args, named):
    run = tmp_path / "run"
    run.mkdir()
    before = tree_snapshot(tmp_path)
    result = run_cli(*TINY, *args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 1 and named in result.stderr and "Traceback" not in result.stderr
    assert tree_snapshot(tmp_path) == before  # no .lock, nothing


def test_a_sweep_job_out_of_range_is_refused_naming_it(tmp_path):
    """A sweep may vary a value into and out of range: each job is checked as it starts."""
    from gan_experiments.run import run

    outcome = run(make_cfg("trainer.ema_decay=1.0"), tmp_path / "job", sweep_dir=tmp_path)
    assert outcome.kind == "refused" and "trainer.ema_decay must be in [0, 1), got 1.0" in outcome.message
    assert not (tmp_path / "job").exists()


@pytest.mark.parametrize("args,named", [
    (["trainer.sample_every=${trainer.stepz}"], "trainer.sample_every: Interpolation key 'trainer.stepz' not found"),
])
def test_an_interpolation_typo_is_one_paragraph(tmp_path, args, named):
    result = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 1 and named in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_duplicate_key_in_a_config_dir_names_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "conf" / "optimizer").mkdir(parents=True)
    (tmp_path / "conf" / "optimizer" / "mine.yaml").write_text("d:\n  lr: 1\nd:\n  lr: 2\n")
    message = run_entry_point(monkeypatch, ["--config-dir", str(tmp_path / "conf"), "optimizer=mine"])
    assert "mine.yaml, line 3, column 1: found duplicate key d" in message


def test_a_yaml_syntax_error_in_a_config_dir_names_file_line_and_column(tmp_path):
    (tmp_path / "conf" / "loss").mkdir(parents=True)
    (tmp_path / "conf" / "loss" / "mine.yaml").write_text("defaults:\n  - bce\ngenerator:\n  x: 1\n   bad: [1\n")
    result = run_cli("--config-dir", str(tmp_path / "conf"), "loss=mine", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'conf' / 'loss' / 'mine.yaml'}, line 5, column 7" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_an_optuna_range_it_cannot_search_names_the_key(tmp_path):
    result = run_cli("-m", "hparams_search=optuna", "optimizer.g.lr=tag(log, interval(0, 1e-3))",
                     "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "optimizer.g.lr=tag(log, interval(0, 1e-3)): The `low` value must be larger than 0" in result.stderr
    assert not (tmp_path / "sweep").exists()


def test_every_preset_is_in_range():
    for preset in sorted(Path(CONF / "experiment").glob("*.yaml")):
        assert out_of_range(make_cfg(f"+experiment={preset.stem}")) == [], preset.stem
