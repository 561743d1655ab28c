"""The real sets in ../shared/data: counts as stated in its README (skipped when absent)."""

import pytest

from medscope.data.info import data_info
from medscope.data.sources import load_source
from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

DEFUNGI = SHARED_DATA / "defungi"
BLOOD = SHARED_DATA / "blood-cells-4"
# README: TSH = H1, BASH = H2, GMA = H3, SHC = H5, BBH = H6 (train + test).
DEFUNGI_COUNTS = {"TSH": (3523, 881), "BASH": (1867, 467), "GMA": (655, 164),
                  "SHC": (654, 164), "BBH": (591, 148)}


def _need(path):
    if not path.is_dir():
        pytest.skip(f"{path} absent")


def test_defungi_counts_and_duplicates():
    _need(DEFUNGI)
    info = data_info(DEFUNGI, workers=4)
    assert info.source.kind == "presplit" and info.n == 9114
    assert sum(info.counts["train"].values()) == 7290
    assert sum(info.counts["test"].values()) == 1824
    assert {c: (info.counts["train"][c], info.counts["test"][c]) for c in DEFUNGI_COUNTS} \
        == DEFUNGI_COUNTS
    assert len(info.duplicates) == 59 and not info.bad
    crossing = [g for g in info.duplicates if len({n.split("/")[0] for n in g}) > 1]
    assert len(crossing) == 21
    assert info.sizes == {(224, 224): 9114}


def test_blood_cells_counts():
    _need(BLOOD)
    src = load_source(BLOOD)
    splits = src.given_splits().tolist()
    assert src.classes == ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
    assert splits.count("train") == 9957 and splits.count("test") == 2487
    assert all(3000 < n < 3200 for n in src.counts().values())
