import shutil

from medscope.cli import main
from medscope.data.info import data_info, format_info
from tests.conftest import make_image_folder


def test_info_counts_duplicates_and_bad_files(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d", per_class=3, size=16)
    shutil.copy(root / "alpha" / "alpha_000.png", root / "beta" / "copy.png")
    (root / "gamma" / "bad.png").write_bytes(b"")
    info = data_info(root)
    assert info.counts == {"all": {"alpha": 3, "beta": 4, "gamma": 4}}
    assert info.duplicates == [["alpha/alpha_000.png", "beta/copy.png"]]
    assert info.bad == [("gamma/bad.png", "empty file (0 bytes)")]
    assert info.sizes == {(16, 16): 10}
    assert main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "duplicates: 1 group" in out and "bad files: 1" in out and "16x16 10" in out
    assert "gamma/bad.png: empty file" in format_info(info)


def test_info_on_missing_path_is_one_line_error(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "nope")]) == 2
    assert "data directory not found" in capsys.readouterr().err


def test_info_counts_the_groups_of_a_pattern_and_those_spanning_the_given_splits(tmp_path,
                                                                                  capsys):
    root = tmp_path / "split"
    for split, n in (("train", 4), ("test", 2)):
        make_image_folder(root / split, per_class=n, size=16, seed=n)
    assert main(["data", "info", str(root), "--group-pattern", r"[a-z]+_00[01]"]) == 0
    out = capsys.readouterr().out
    # alpha_000/001, beta_…, gamma_… are in both folders; alpha_002/003 … are ungrouped
    assert "groups: 6 (kept whole" in out and "6 group(s) span the given splits" in out
    assert main(["data", "info", str(root), "--group-pattern", "nomatch"]) == 2
    assert "matches none of the 18 image paths" in capsys.readouterr().err
