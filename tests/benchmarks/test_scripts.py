"""The benchmark scripts run end to end at toy scale, on the paths a better-equipped machine
(AVX512-BF16, a GPU) will take: bf16 training rows, every inference backend, the speedrun
curve. The figures are meaningless here; the tests check that each script finishes and that
its report holds one well-formed row per requested mode, backend or epoch. Run as
subprocesses, exactly as documented in each script's docstring."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_script(name: str, *args: str, timeout: int = 600) -> str:
    # One torch thread: the suite may share the machine, and two oversubscribed OpenMP
    # pools make small forwards 100x slower, which only lengthens the test.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def table_rows(report: str, first_cell: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in report.splitlines() if line.startswith("|")]
    return [r for r in rows if r[0] == first_cell]


def positive(cell: str) -> float:
    value = float(re.sub(r"[^0-9.eE+-]", "", cell))
    assert value > 0, cell
    return value


def test_train_throughput_reports_every_mode_and_preset(image_folder, tmp_path):
    out = tmp_path / "train_throughput.txt"
    run_script("train_throughput.py", "--data", str(image_folder), "--presets", "flips",
               "--modes", "fp32-cl,bf16", "--img-size", "32", "--batch-size", "8",
               "--epochs", "2", "--ref-epochs", "1", "--ref-workers", "0", "--threads", "1",
               "--out", str(out))
    report = out.read_text()
    assert "AVX512-BF16/AMX" in report  # the machine line a results file needs
    for mode in ("fp32-cl", "bf16"):
        (row,) = table_rows(report, mode)
        assert row[1] == "flips"
        medscope, limit, reference, efficiency, speedup = map(positive, row[2:7])
        assert efficiency == pytest.approx(medscope / limit, rel=0.02, abs=0.002)
        assert speedup == pytest.approx(medscope / reference, rel=0.02, abs=0.02)
        before, after = (float(v) for v in row[-1].split("->"))
        assert before > 0 and after > 0
    assert re.search(r"peak RSS: this process \d+ MiB", report)


def test_predict_throughput_reports_every_backend(trained_run, tmp_path):
    import shutil

    run = shutil.copytree(trained_run.root, tmp_path / "run")  # the script exports into it
    out = tmp_path / "predict_throughput.txt"
    backends = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")
    run_script("predict_throughput.py", "--run", str(run), "--limit-images", "8",
               "--latency-images", "3", "--repeats", "1", "--batch-sizes", "1,4",
               "--backends", ",".join(backends), "--threads", "1", "--out", str(out))
    report = out.read_text()
    assert re.search(r"overhead, torch fp32, batch 4: .* overhead [+-]\d", report)
    for backend in backends:
        (row,) = table_rows(report, backend)
        for cell in row[1:7]:
            positive(cell)
        assert 0.0 <= float(row[7]) <= 1.0
    (fp32,) = table_rows(report, "torch-fp32")
    assert fp32[2] == "1.00x" and fp32[8] == "+0.00 pt"


def test_speedrun_reports_a_curve_and_the_median(tmp_path):
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=10, size=36, seed=0)
    make_image_folder(data / "test", per_class=4, size=36, seed=1)
    out = tmp_path / "speedrun.txt"
    run_script("speedrun.py", "--data", str(data), "--seeds", "0", "--target", "0.01",
               "--budget-min", "10", "--set", "data.img_size=32", "--set", "train.epochs=2",
               "--set", "train.batch_size=8", "--tta", "--out", str(out))
    report = out.read_text()
    epochs = [r for r in (table_rows(report, "1") + table_rows(report, "2"))]
    assert len(epochs) == 2
    walls = [positive(r[1]) for r in epochs]
    assert walls[0] < walls[1]  # wall time accumulates (tenths of a second)
    for r in epochs:
        assert 0.0 <= float(r[3]) <= 1.0
    # any test accuracy above 1 % meets this target in epoch 1
    assert re.search(r"time to 0\.01 test accuracy: \d+ s", report), report
    assert "median over 1 seed(s)" in report
    # the recipe's first experiment unless --experiment names another
    assert "experiment resnet10t-64;" in report and "## seed 0: resnet10t at 32 px" in report
    # --tta: the last weights once more, on the 8 views, no earlier on the clock than epoch 2
    (tta,) = table_rows(report, "2 + TTA")
    assert positive(tta[1]) >= walls[1] and 0.0 <= float(tta[3]) <= 1.0
    assert re.search(r"with TTA: median \d\.\d{4}", report), report


def test_augment_batch_times_every_preset_and_checks_the_compiled_pixels(tmp_path):
    data = tmp_path / "data"
    make_image_folder(data, per_class=4, size=20, seed=0)
    out = tmp_path / "augment_batch.txt"
    run_script("augment_batch.py", "--data", str(data), "--img-size", "16",
               "--batch-size", "6", "--reps", "2", "--out", str(out))
    report = out.read_text()
    assert "(6, 3, 16, 16) uint8" in report
    for preset in ("flips", "microscopy", "keras-classic", "randaugment"):
        (eager,) = [r for r in table_rows(report, preset) if r[1] == "eager"]
        assert float(eager[2]) >= 0.0  # a toy batch may round to 0.00 ms
    compiled = [r for r in table_rows(report, "microscopy") if r[1] == "compiled"]
    if compiled:  # where torch.compile works: the same pixels as eager
        assert compiled[0][5] == "yes", report
    else:
        assert "measured eager only" in report


def test_ood_refer_runs_without_real_data_and_refers_the_degenerate_images(tmp_path):
    # A tiny demo model; the real-data parts (blood cells, DeFungi) skip, saying so.
    import json

    out = tmp_path / "ood_refer.json"
    printed = run_script("ood_refer.py", "--quick", "--data", str(tmp_path / "no-data"),
                         "--work", str(tmp_path / "work"), "--out", str(out))
    assert "skipped:" in printed and "blood-cells-4" in printed
    result = json.loads(out.read_text())
    assert "skipped" in result["blood"] and "skipped" in result["demo"]["foreign"]
    own = result["demo"]["own_test"]
    assert own["n"] > 0 and 0.0 <= own["flagged_share"] <= own["referred_share"] <= 1.0
    assert result["demo"]["model"]["ood"]["method"] == "mahalanobis"
    edge = result["demo"]["edge"]
    assert edge["blank 500x500 black"]["refer_reason"] == "blank image"
    for name in ("1x1", "20000x1 strip"):
        assert edge[name]["refer_to_expert"] == "yes"
        assert edge[name]["refer_reason"] == "degenerate image", (name, edge[name])


SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "machine.py")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_imports_and_answers_help(name):
    # A renamed function in the package breaks a benchmark nobody runs for weeks; --help
    # imports the whole script.
    run_script(name, "--help", timeout=120)


@pytest.mark.parametrize(("name", "flag"), [("train_throughput.py", "--img-size"),
                                            ("augment_batch.py", "--batch-size"),
                                            ("zoo.py", "--sizes")])
def test_a_nonsense_size_is_one_error_line_not_a_traceback(name, flag):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), flag, "0"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"argument {flag}: must be at least 1, not 0" in done.stderr


def test_speedrun_refuses_an_experiment_the_recipe_lacks():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speedrun.py"),
                           "--experiment", "resnet99"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert ("--experiment resnet99: not in defungi-fast (resnet10t-64, resnet18-112)"
            in done.stderr)
