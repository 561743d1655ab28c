"""medscope audit on DeFungi (../shared/data; skipped when absent): the README's known
duplicates are found, and the false-positive rates stay where docs/audit.md puts them."""

import pytest

from medscope.data.audit import summary
from medscope.workflows.audit import audit_data
from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

DEFUNGI = SHARED_DATA / "defungi"


def test_defungi_duplicates_leaks_and_outliers():
    if not DEFUNGI.is_dir():
        pytest.skip(f"{DEFUNGI} absent")
    audit = audit_data(DEFUNGI, workers=4)
    s = summary(audit)
    exact = [g for g in audit.duplicates if g.kind == "exact"]
    # README: 59 groups of byte-identical images (same class), 21 of them cross train/test.
    assert s["exact_groups"] == 59 and sum(g.leak for g in exact) == 21
    assert s["conflict_groups"] == 0 and s["unreadable"] == 0
    # Overlapping patches of one micrograph; 194 groups when measured (docs/audit.md).
    assert 150 <= s["near_groups"] <= 250
    assert s["outliers"] <= 0.03 * s["images"]
