"""benchmarks/label_efficiency.py --quick: pretrain, fine-tune both arms, write the results
file and the plot, on tiny synthetic micrographs; then again, skipping every finished run."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.benchmarks.test_scripts import run_script

pytestmark = pytest.mark.slow


def test_quick_mode_writes_both_accuracies_per_fraction_and_the_gain(tmp_path):
    results, plot = tmp_path / "label_efficiency.json", tmp_path / "plot.png"
    args = ("--quick", "--out", str(tmp_path / "out"), "--results", str(results),
            "--plot", str(plot), "--protocols", "full", "lp-ft")
    run_script("label_efficiency.py", *args)
    found = json.loads(results.read_text())
    assert found["quick"] is True and "AVX512-BF16" in found["machine"]
    assert found["command"].startswith("python benchmarks/label_efficiency.py --quick")
    assert set(found["fractions"]) == {"0.1", "1"}
    for row in found["fractions"].values():
        for arm in ("scratch", "pretrained"):
            assert 0 <= row[arm]["accuracy_mean"] <= 1
            assert set(row[arm]["per_seed"]) == {"0"}
            assert row[arm]["micrograph_accuracy_mean"] is not None
    gain = found["fractions"]["0.1"]["pretrained"]["accuracy_mean"] - \
        found["fractions"]["0.1"]["scratch"]["accuracy_mean"]
    assert found["gain_at_10pct"] == pytest.approx(100 * gain, abs=0.01)
    # Both protocols ran; the headline is the one with the better validation macro-F1.
    chosen = found["finetune"]["selected_protocol"]
    ten = found["fractions"]["0.1"]
    assert set(ten["by_protocol"]) == {"full", "lp-ft"} and ten["pretrained"]["protocol"] == chosen
    val = {p: ten["by_protocol"][p]["val_f1_macro_mean"] for p in ("full", "lp-ft")}
    one = found["fractions"]["1"]["by_protocol"]
    val = {p: (val[p] + one[p]["val_f1_macro_mean"]) / 2 for p in val}
    assert val[chosen] == max(val.values())
    lpft = yaml.safe_load((tmp_path / "out" / "pretrained-lp-ft_0.1_seed0" / "config.yaml"
                           ).read_text())["train"]
    assert (lpft["freeze"], lpft["unfreeze_at"]) == ("backbone", lpft["epochs"] // 2 + 1)
    pre = found["pretraining"]
    assert pre["objective"] == "simclr" and pre["epochs_done"] == 1 and pre["wall_s"] > 0
    assert found["split"]["counts"]["test"]["micrographs"] > 0 and plot.stat().st_size > 0
    # Pretraining read the training micrographs only.
    images = (tmp_path / "out" / "pretrain_images").rglob("*.jpg")
    linked = {p.name.rsplit("_", 1)[0] for p in images}
    split = (tmp_path / "out" / "split.csv").read_text().splitlines()[1:]
    held_out = {row.split(",")[2] for row in split if not row.endswith(",train")}
    assert linked and not linked & held_out
    walls = json.loads((tmp_path / "out" / "bench_wall.json").read_text())
    run_script("label_efficiency.py", *args)  # resumable: everything is finished
    assert json.loads((tmp_path / "out" / "bench_wall.json").read_text())["pretrain"] == \
        walls["pretrain"]
