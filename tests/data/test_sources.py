import pytest

from medscope.data.sources import scan_folder
from medscope.errors import MedscopeError
from tests.conftest import make_image_folder


def test_scans_classes_and_nested_images(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=3)
    nested = root / "beta" / "deeper" / "x"
    nested.mkdir(parents=True)
    (root / "beta" / "beta_000.png").rename(nested / "moved.png")
    (root / "_dropped").mkdir()  # ignored: starts with '_'
    src = scan_folder(root)
    assert src.classes == ["alpha", "beta", "gamma"]
    assert src.counts() == {"alpha": 3, "beta": 3, "gamma": 3}
    assert any(s.path.name == "moved.png" and s.label == 1 for s in src.samples)


@pytest.mark.parametrize("setup, message", [
    (lambda r: None, "data directory not found"),
    (lambda r: (r / "only").mkdir(parents=True), "need at least 2"),
])
def test_folder_errors(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(MedscopeError, match=message):
        scan_folder(root)


def test_empty_class_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    (root / "empty").mkdir()
    with pytest.raises(MedscopeError, match="empty.*holds no images"):
        scan_folder(root)


def test_expected_classes_must_match(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    with pytest.raises(MedscopeError, match="missing \\['delta'\\]"):
        scan_folder(root, classes=["alpha", "beta", "gamma", "delta"])


def test_patch_manifest_gives_groups(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    (root / "patches.csv").write_text(
        "patch,source\nalpha/alpha_000.png,slideA.jpg\nalpha/alpha_001.png,slideA.jpg\n")
    groups = {s.path.name: s.group for s in scan_folder(root).samples}
    assert groups["alpha_000.png"] == groups["alpha_001.png"] == "slideA.jpg"
    assert groups["beta_000.png"] is None
