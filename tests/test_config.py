"""Every combination of options composes, and the schemas reject what they should."""

import itertools

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import CONF, make_cfg

OPTIONS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
           for group in ("data", "model", "loss", "optimizer", "schedule")}


def test_default_config():
    cfg = make_cfg()
    assert cfg.data._target_ == "gan_experiments.data.mnist_5k" and cfg.data.image_size is None  # 28x28
    assert cfg.model._target_ == "gan_experiments.models.dcgan.build"
    assert cfg.optimizer.g.lr == cfg.optimizer.d.lr == 2e-4
    assert list(cfg.optimizer.g.betas) == [0.5, 0.999]
    assert cfg.seed == 0 and cfg.resume is False


def _combination(data, model, loss):
    """Every option composes in the quick suite (each data x model pair with one loss, each
    loss on the default data); the rest of the cross product is slow only for its number."""
    quick = loss == "nonsat" or (data, model) == ("mnist_5k", "dcgan")
    return pytest.param(data, model, loss, marks=() if quick else pytest.mark.slow)


@pytest.mark.parametrize("data,model,loss", [
    _combination(*c) for c in itertools.product(OPTIONS["data"], OPTIONS["model"], OPTIONS["loss"])])
def test_every_data_model_loss_composes(data, model, loss):
    cfg = make_cfg(f"data={data}", f"model={model}", f"loss={loss}")
    assert cfg.loss.discriminator._partial_ and cfg.loss.generator._partial_


@pytest.mark.parametrize("optimizer", OPTIONS["optimizer"])
@pytest.mark.parametrize("schedule", OPTIONS["schedule"])
def test_optimizers_and_schedules_compose_per_network(optimizer, schedule):
    cfg = make_cfg(f"optimizer={optimizer}", f"schedule={schedule}", "optimizer.d.lr=0.5", "trainer.steps=7")
    assert cfg.optimizer.d.lr == 0.5 and cfg.optimizer.g.lr != 0.5  # TTUR: G and D differ
    assert cfg.optimizer.g._partial_ and cfg.schedule.d._partial_
    if schedule != "constant":
        assert 7 in cfg.schedule.g.values()


def test_schemas_reject_wrong_keys_types_and_choices():
    with pytest.raises(ConfigCompositionException):
        make_cfg("trainer.stepz=3")
    with pytest.raises((ConfigCompositionException, ValidationError)):
        make_cfg("trainer.steps=many")
    with pytest.raises((ConfigCompositionException, ValidationError)):
        make_cfg("model.d_norm=group")
    with pytest.raises(ConfigCompositionException):
        make_cfg("loss=unknown")
