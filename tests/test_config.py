import pytest

from medscope.config import config_to_yaml, load_config, parse_override
from medscope.errors import MedscopeError


def test_yaml_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name: resnet18\ntrain:\n  lr: 0.01\n  epochs: 5\n")
    cfg = load_config(recipe, {"train.lr": 0.002, "data.img_size": 64})
    assert (cfg.model.name, cfg.train.lr, cfg.train.epochs, cfg.data.img_size) == (
        "resnet18", 0.002, 5, 64)


def test_saved_yaml_round_trips(tmp_path):
    cfg = load_config(overrides={"train.seed": 9, "data.path": "some/where"})
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("overrides, message", [
    ({"train.lrr": 0.1}, "train.lrr: Extra inputs are not permitted"),
    ({"train.epochs": 0}, "train.epochs"),
    ({"data.val_fraction": 0.5, "data.test_fraction": 0.45}, "at least 10%"),
])
def test_invalid_values_are_one_line_errors(overrides, message):
    with pytest.raises(MedscopeError, match=message) as err:
        load_config(overrides=overrides)
    assert "\n" not in str(err.value)


def test_override_parsing():
    assert parse_override("train.lr=1e-4") == ("train.lr", 1e-4)
    assert parse_override("model.kwargs={drop_rate: 0.2}") == ("model.kwargs", {"drop_rate": 0.2})
    with pytest.raises(MedscopeError):
        parse_override("no-equals-sign")
