"""Property-based: whatever a user types after --set or puts in a YAML file, the config parser
returns a RunConfig or raises a one-line MedscopeError, nothing else."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medscope.config import RunConfig, load_config, parse_override
from medscope.errors import MedscopeError

KEYS = ["out", "track", "data.path", "data.img_size", "data.in_chans", "data.val_fraction",
        "data.test_fraction", "data.augment", "data.mixup", "data.folds", "model.name",
        "model.kwargs", "train.lr", "train.epochs", "train.seed", "train.clip_grad",
        "train.precision", "train.checkpoint_every", "train.nan_policy", "train.deterministic"]

# YAML-ish values: the scalars and collections a user could write, including nonsense. No
# subnormal floats: training tests in the same process flush them to zero (flush_denormals),
# and hypothesis refuses to generate them then.
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_subnormal=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=6)
keys = st.sampled_from(KEYS) | st.text(max_size=20)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _one_line_or_config(make) -> None:
    try:
        config = make()
    except MedscopeError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(config, RunConfig)


@SETTINGS
@given(st.text(max_size=60))
def test_any_set_item_parses_or_is_one_line_error(item):
    def make():
        key, value = parse_override(item)
        return load_config(overrides={key: value})

    _one_line_or_config(make)


@SETTINGS
@given(st.dictionaries(keys, yaml_values, max_size=4))
def test_any_overrides_give_a_config_or_one_line_error(overrides):
    _one_line_or_config(lambda: load_config(overrides=overrides))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["data", "model", "train", "out", "extra"]),
                       yaml_values | st.dictionaries(st.sampled_from(
                           [k.split(".")[-1] for k in KEYS]), yaml_values, max_size=4),
                       max_size=4) | st.text(max_size=80))
def test_any_yaml_file_gives_a_config_or_one_line_error(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("yaml") / "recipe.yaml"
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _one_line_or_config(lambda: load_config(path))
