"""The table behind `medscope models`."""

import pytest

from medscope.models import CLASSIC_TIMM, zoo_table


@pytest.mark.slow
def test_zoo_table_lists_own_and_classic_timm_models():
    rows = {r["name"]: r for r in zoo_table(224)}
    own = {"simple_cnn", "lenet5", "alexnet", "plain18", "plain34", "vit_seed"}
    assert own | set(CLASSIC_TIMM) == set(rows)
    assert {rows[n]["source"] for n in own} == {"medscope"}
    assert rows["resnet18"]["source"] == "timm" and rows["resnet18"]["params"] == 11_689_512
    assert rows["inception_v3"]["default_size"] == 299 and rows["inception_v3"]["min_size"] == 75
    assert abs(rows["resnet50"]["gmacs"] - 4.11) < 0.12


@pytest.mark.slow
def test_zoo_table_pattern_and_too_small_sizes():
    rows = {r["name"]: r for r in zoo_table(64, "*incep*")}
    assert "inception_v3" in rows and "inception_v4" in rows  # any timm name with a pattern
    assert rows["inception_v3"]["gmacs"] is None and "75" in rows["inception_v3"]["note"]
    assert all(r["source"] == "timm" for r in rows.values())
    lenet = zoo_table(32, "lenet5")[0]
    assert lenet["gmacs"] > 0 and lenet["min_size"] == 32
