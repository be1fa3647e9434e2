"""The paper presets compose with the published settings, carry their reference numbers, and
their networks train; the MLP options are checked at composition."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from conftest import CONF, make_cfg, tiny_cfg, train
from gan_experiments.models import mlp

PACGAN = ["pacgan_ring", "pacgan_grid"]
# Table 1 of Lin et al. 2018, GAN (pack 1) and PacGAN2: (modes, hq, reverse_kl) means.
PAPER = {"pacgan_ring": {1: (6.3, 0.982, 0.45), 2: (7.9, 0.956, 0.07)},
         "pacgan_grid": {1: (17.3, 0.948, 0.70), 2: (23.8, 0.913, 0.13)}}


def preset(name, *overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"+experiment={name}", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("name", PACGAN)
def test_pacgan_presets_follow_the_official_2d_protocol(name):
    cfg = preset(name, "model.pack=2")
    assert cfg.data._target_.endswith(name.split("_")[1])
    m = cfg.model
    assert m._target_ == "gan_experiments.models.mlp.build" and m.latent_dim == 2
    assert list(m.g_hidden) == [400] * 4 and m.g_norm.value == "batch" and m.g_activation.value == "relu"
    assert list(m.d_hidden) == [200] * 3 and m.d_activation.value == "maxout" and m.d_maxout_pieces == 5
    assert m.init_std == 0.02 and m.d_dropout == 0.0
    for net in ("g", "d"):
        assert cfg.optimizer[net].lr == 1e-4 and list(cfg.optimizer[net].betas) == [0.8, 0.999]
    assert cfg.hydra.runtime.choices["loss"] == "nonsat"
    assert cfg.loss.generator._target_ == "gan_experiments.losses.nonsaturating_generator"
    assert cfg.trainer.batch_size == 200  # 100 packed examples of 2 samples
    assert cfg.trainer.steps == 400_000
    assert cfg.eval.num_samples == 2500
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params == {"model.pack": "1,2,3,4", "seed": "range(10)"}


@pytest.mark.parametrize("name", PACGAN)
def test_pacgan_budget_is_one_override(name):
    cfg = preset(name, "trainer.steps=20000")
    assert cfg.trainer.steps == 20000 and cfg.trainer.batch_size == 100
    for every in (cfg.trainer.log_every, cfg.trainer.sample_every, cfg.trainer.checkpoint_every, cfg.eval.every):
        assert 20000 % every == 0 and 400_000 % every == 0  # evenly spaced at either budget


@pytest.mark.parametrize("name", PACGAN)
def test_pacgan_reference_rows(name):
    cfg = preset(name)
    ref = OmegaConf.to_container(cfg.reference)
    assert "Lin et al. 2018" in ref["source"] and "Table 1" in ref["source"]
    assert ref["runs"] == 10 and ref["row_key"] == "model.pack"
    assert OmegaConf.select(cfg, ref["row_key"]) in ref["rows"]
    assert sorted(ref["rows"]) == [1, 2, 3, 4]
    assert [row["label"] for row in ref["rows"].values()] == ["GAN", "PacGAN2", "PacGAN3", "PacGAN4"]
    for pack, row in ref["rows"].items():
        assert set(row["metrics"]) == {"modes", "hq", "reverse_kl"}
        for mean, spread in row["metrics"].values():
            assert mean is not None and (spread is None or spread >= 0)
        assert 0 <= row["metrics"]["hq"][0] <= 1  # a fraction, not the paper's %
        if pack in PAPER[name]:
            assert tuple(row["metrics"][k][0] for k in ("modes", "hq", "reverse_kl")) == PAPER[name][pack]


def test_runs_without_a_preset_have_no_reference():
    assert make_cfg().reference is None


@pytest.mark.skipif(not (CONF / "data" / "mnist_5k.yaml").exists(), reason="conf/data/mnist_5k.yaml not added yet")
def test_loss_study_runs_on_real_digits_with_its_claim():
    cfg = preset("loss_study")
    assert cfg.hydra.runtime.choices["data"] == "mnist_5k"
    assert cfg.model._target_ == "gan_experiments.models.dcgan.build"
    assert cfg.hydra.sweeper.params == {"loss": "bce,nonsat,smooth", "seed": "0,1,2"}
    ref = cfg.reference
    assert "Lucic et al. 2018" in ref.source
    assert (ref.better, ref.worse, ref.metric) == ("loss=nonsat", "loss=bce", "fid_classifier")


@pytest.mark.parametrize("override", ["model.g_activation=swish", "model.g_norm=layer",
                                      "model.d_activation=relu", "model.init_std=wide"])
def test_wrong_mlp_option_fails_at_composition(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        make_cfg("model=mlp", override)


def test_pacgan_networks_train_at_pack_2(tmp_path):
    """The preset's G and D (narrowed) through the real loop, one batch of 4 packed pairs."""
    cfg = tiny_cfg("data=ring", "model.latent_dim=2", "model.g_hidden=[16,16]", "model.g_norm=batch",
                   "model.g_activation=relu", "model.d_hidden=[8,8]", "model.d_activation=maxout",
                   "model.init_std=0.02", "model.pack=2", "trainer.batch_size='${mul:4,${model.pack}}'",
                   "optimizer.g.betas=[0.8,0.999]", "optimizer.d.betas=[0.8,0.999]", model="mlp")
    assert cfg.trainer.batch_size == 8
    summary = train(cfg, tmp_path)
    assert summary["status"] == "ok" and summary["step"] == cfg.trainer.steps
    G, D = mlp.build((2,), is_image=False, **{k: v for k, v in cfg.model.items() if k != "_target_"})
    assert any(isinstance(m, mlp.Maxout) for m in D.modules())
    assert D(G(torch.randn(8, 2))).shape == (4,)


def test_pacgan_stacked_mnist_follows_the_official_recipe_and_trains(tmp_path):
    """The VEEGAN-setting recipe of fjxmlzn/PacGAN stacked_MNIST_experiments/VEEGAN_experiment/
    config.py, Table 2's numbers beside it; two steps of its networks on its data train."""
    cfg = preset("pacgan_stacked_mnist", "model.pack=2")
    assert cfg.data._target_.endswith("stacked_mnist") and cfg.model.latent_dim == 100
    for net in ("g", "d"):
        assert cfg.optimizer[net].lr == 2e-4 and list(cfg.optimizer[net].betas) == [0.5, 0.999]
    assert cfg.trainer.batch_size == 128 and cfg.trainer.steps == 100_000  # 64 packs of 2; 50 epochs
    assert cfg.eval.num_samples == 26_000 and cfg.eval.objective == "stacked_modes"
    ref = OmegaConf.to_container(cfg.reference)
    assert "Table 2" in ref["source"] and ref["rows"][1]["metrics"]["stacked_modes"] == [78.9, 6.46]
    assert ref["rows"][2]["metrics"]["stacked_kl"] == [0.06, 0.003]
    run = make_cfg("+experiment=pacgan_stacked_mnist", "trainer.steps=2", "trainer.log_every=1",
                   "trainer.sample_every=2", "trainer.checkpoint_every=2", "trainer.progress=false",
                   "eval.num_samples=64", f"eval.cache_dir={tmp_path / 'cache'}", "eval.inception=false")
    summary = train(run, tmp_path / "run")
    assert summary["status"] == "ok" and 1 <= summary["value"] <= 64
