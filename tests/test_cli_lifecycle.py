"""The run lifecycle through ``medscope.cli.main``, one test (or more) per bug of issue #8:
resume, splits, validation before work, one-line errors, cache, multi-label, side effects."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medscope.cli import main
from medscope.run import RunDir, read_json
from tests.conftest import make_image_folder, nan_loss_at_call


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("life") / "stripes", per_class=8, size=24)


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-q", "--data", str(data), "--out", str(out), "--img-size", "16",
            "--batch-size", "4", "--model", "simple_cnn", *extra]


def _run(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def _history(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "history.csv").open()))


def _test_paths(run: Path) -> set[str]:
    return {r["path"] for r in csv.DictReader((run / "splits.csv").open()) if r["split"] == "test"}


# ---------------------------------------------------------------- bugs 1 and 2: resume


def _kill_after_epoch_one(data: Path, out: Path, epochs: int) -> None:
    """A real ``kill -9`` of a training process right after epoch 1 was written."""
    code = f"""
import os, signal
import medscope.train.engine as engine
real = engine.RunWriter.__call__
def killing(self, model, optimizer, state, row, improved):
    real(self, model, optimizer, state, row, improved)
    os.kill(os.getpid(), signal.SIGKILL)
engine.RunWriter.__call__ = killing
from medscope.cli import main
raise SystemExit(main({_train(data, out, "--epochs", str(epochs))!r}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert proc.returncode == -9, proc.stderr


@pytest.mark.slow
def test_resume_needs_only_the_run_dir_after_kill_9(data, tmp_path, capsys):
    out = tmp_path / "run"
    _kill_after_epoch_one(data, out, epochs=3)
    assert RunDir(out).has_partial_run() and len(_history(out)) == 1
    code, err = _run(["train", "-q", "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert [r["epoch"] for r in _history(out)] == ["1", "2", "3"]  # 3 epochs, not the default 20
    assert read_json(out / "checkpoints" / "last.json")["epoch"] == 3


@pytest.mark.slow
def test_resume_keeps_saved_config_and_says_what_changed(data, tmp_path, capsys):
    out = tmp_path / "run"
    _kill_after_epoch_one(data, out, epochs=2)
    # --data again (the same folder) changes nothing; --epochs 3 is an explicit change.
    code, err = _run(["train", "--out", str(out), "--resume", "--data", str(data),
                      "--epochs", "3"], capsys)
    assert code == 0
    assert "resuming with train.epochs: 2 -> 3" in err
    assert "data.path" not in err
    assert len(_history(out)) == 3
    assert "lr: 0.0003" in (out / "config.yaml").read_text()  # the saved lr, not re-defaulted


@pytest.mark.slow
def test_resume_refuses_to_change_the_model_or_images(data, tmp_path, capsys):
    out = tmp_path / "run"
    _kill_after_epoch_one(data, out, epochs=2)
    code, err = _run(["train", "-q", "--out", str(out), "--resume", "--img-size", "20"], capsys)
    assert code == 2 and "cannot change data.img_size" in err and "\n" not in err


# ---------------------------------------------------------------- bug 3: no test split


def test_no_test_split_finishes_with_validation_metrics(data, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _run(_train(data, out, "--epochs", "1", "--set", "data.test_fraction=0"), capsys)
    assert code == 0, err
    metrics = read_json(out / "metrics.json")
    assert metrics["data"].startswith("validation split (no test split")
    assert "no test split" in (out / "report.html").read_text()
    assert RunDir(out).is_finished()


def test_no_validation_and_no_test_split_is_refused_before_training(data, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _run(_train(data, out, "--epochs", "1", "--set", "data.test_fraction=0",
                            "--set", "data.val_fraction=0"), capsys)
    assert code == 2 and "no validation or test images" in err
    assert not (out / "checkpoints" / "last.safetensors").exists()


# ---------------------------------------------------------------- bug 4: normalisation sample


def test_channel_stats_sample_the_whole_class_ordered_set():
    from medscope.data.transforms import channel_stats

    # 3,000 images ordered by class: 1,500 black then 1,500 white. The first 2,000 alone
    # would give a mean of 0.25; an even sample gives about 0.5.
    pixels = np.concatenate([np.zeros((1500, 2, 2, 1), np.uint8),
                             np.full((1500, 2, 2, 1), 255, np.uint8)])
    mean, _ = channel_stats(pixels, max_images=2000, seed=0)
    assert mean[0] == pytest.approx(0.5, abs=0.03)
    assert channel_stats(pixels, max_images=2000, seed=0) == channel_stats(pixels, 2000, 0)


@pytest.mark.slow
def test_training_normalisation_comes_from_every_class(tmp_path, capsys, monkeypatch):
    import medscope.data.transforms as transforms

    dark_then_light = tmp_path / "dl"
    for name, value in (("a_dark", 20), ("b_light", 235)):
        (dark_then_light / name).mkdir(parents=True)
        for i in range(10):
            pixels = np.full((16, 16, 3), value, np.uint8)
            pixels[0, 0, 0] += i  # distinct files: identical ones would be one group each
            Image.fromarray(pixels).save(dark_then_light / name / f"{i}.png")
    real = transforms.channel_stats
    # With a 10-image budget, the first 10 training images would all be dark.
    monkeypatch.setattr("medscope.train.setup.channel_stats",
                        lambda pixels, max_images=2000, seed=0: real(pixels, 10, seed))
    out = tmp_path / "run"
    code, err = _run(_train(dark_then_light, out, "--epochs", "1"), capsys)
    assert code == 0, err
    mean = read_json(out / "checkpoints" / "best.json")["mean"]
    assert 0.25 < mean[0] < 0.75


def test_a_class_of_identical_images_is_refused_before_training(tmp_path, capsys):
    """Byte-identical images form one group; a class that is one group cannot be on both
    sides of a split: one line naming the class, not sklearn's traceback."""
    data = tmp_path / "same"
    for name, value in (("a_dark", 20), ("b_light", 235)):
        (data / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(data / name / f"{i}.png")
    code, err = _run(_train(data, tmp_path / "run", "--epochs", "1"), capsys)
    assert code == 2
    assert "class 'a_dark' spans only 1 group(s)" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints" / "last.safetensors").exists()


# ---------------------------------------------------------------- bug 5: stale patches


def _slides(root: Path) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    for cls in ("c1", "c2"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            img = np.stack([(xx * 2 + i * 30) % 256, (yy * 2) % 256, np.full_like(xx, 90)], -1)
            img = (img + rng.normal(0, 3, img.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"slide{i}.png")
    return root


def test_patches_overwrite_removes_stale_patches_and_scan_warns(tmp_path, capsys):
    src, dst = _slides(tmp_path / "slides"), tmp_path / "patches"
    loose = ["--min-tissue", "0", "--max-dark", "1", "--noise-corr", "-1", "-q"]
    assert main(["patches", str(src), str(dst), "--size", "32", *loose]) == 0
    first = {p.name for p in dst.rglob("*.jpg")}
    assert main(["patches", str(src), str(dst), "--size", "48", "--overwrite", *loose]) == 0
    second = {p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg")}
    listed = {r["patch"] for r in csv.DictReader((dst / "patches.csv").open()) if r["patch"]}
    assert first and second == listed  # nothing of the 32-px run is left
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(dst / "c1" / "stray.jpg")
    capsys.readouterr()
    assert main(["data", "info", str(dst)]) == 0
    assert "1 image(s) are not in patches.csv" in capsys.readouterr().err


# ---------------------------------------------------------------- bug 6: split names


def test_split_file_with_unknown_split_names_is_one_line(data, tmp_path, capsys):
    split = tmp_path / "split.csv"
    rows = [(p.relative_to(data).as_posix(), "valid" if i % 5 == 0 else "train")
            for i, p in enumerate(sorted(data.rglob("*.png")))]
    with split.open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "split"), *rows])
    code, err = _run(_train(data, tmp_path / "run", "--split-file", str(split)), capsys)
    assert code == 2 and "split.csv: unknown split name(s) 'valid'" in err


# ---------------------------------------------------------------- bug 7: one-line errors


@pytest.mark.parametrize("extra, message", [
    (["--set", "model.kwargs={widen: 2}"],
     "model.kwargs {'widen': 2}: not accepted by 'simple_cnn'"),
    (["--device", "gpu"], "--device 'gpu': not a device name"),
    (["--freeze", "stages:99"], "cannot freeze 99"),
    (["--pretrained", "weights/missing.safetensors"], "weights file not found"),
    (["--img-size", "8", "--model", "resnet18"], "needs images of at least"),
])
def test_config_mistakes_fail_before_any_work(data, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    code, err = _run(_train(data, out, *extra), capsys)
    assert code == 2 and message in err and "\n" not in err
    assert not out.exists()  # nothing scanned, decoded or written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_one_line(data, tmp_path, capsys):
    code, err = _run(_train(data, tmp_path / "run", "--device", "cuda"), capsys)
    assert code == 2 and "no CUDA GPU" in err


def test_nan_loss_names_epoch_and_step_and_keeps_the_good_checkpoint(data, tmp_path, capsys,
                                                                    monkeypatch):
    # Epoch 1 has 3 training steps and one validation batch: call 6 is epoch 2, step 2.
    nan_loss_at_call(monkeypatch, 6)
    out = tmp_path / "run"
    code, err = _run(_train(data, out, "--epochs", "3", "--set", "data.test_fraction=0.25",
                            "--set", "data.val_fraction=0.25"), capsys)
    assert code == 2 and "in epoch 2, step 2" in err and "\n" not in err
    assert read_json(out / "checkpoints" / "last.json")["epoch"] == 1
    assert (out / "checkpoints" / "best.safetensors").is_file()


def test_checkpoint_json_with_missing_keys_is_one_line(trained_run, image_folder, tmp_path,
                                                       capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run.root, run)
    meta_path = run / "checkpoints" / "best.json"
    meta = json.loads(meta_path.read_text())
    del meta["classes"], meta["mean"]
    meta_path.write_text(json.dumps(meta))
    image = next(image_folder.rglob("*.png"))
    code, err = _run(["predict", "-q", str(run), str(image)], capsys)
    assert code == 2 and "best.json: checkpoint metadata lacks classes, mean" in err


# ---------------------------------------------------------------- bug 8: evaluation runtime


@pytest.mark.slow
def test_post_training_evaluation_uses_precision_and_device(data, tmp_path, capsys,
                                                           monkeypatch):
    from medscope.predictor import Predictor

    seen = []
    real = Predictor.load.__func__

    def recording(cls, source, precision="auto", device="auto"):
        seen.append((precision, device))
        return real(cls, source, precision=precision, device=device)

    monkeypatch.setattr(Predictor, "load", classmethod(recording))
    out = tmp_path / "run"
    code, err = _run(_train(data, out, "--epochs", "1", "--precision", "fp32",
                            "--device", "cpu"), capsys)
    assert code == 0, err
    assert seen and set(seen) == {("fp32", "cpu")}  # calibration and evaluation alike
    code, err = _run(["evaluate", "-q", str(out), "--precision", "bf16", "--device", "cpu"],
                     capsys)
    assert code == 0 and seen[-1] == ("bf16", "cpu")


# ---------------------------------------------------------------- bug 9: seeds


@pytest.mark.slow
def test_split_seed_keeps_the_test_set_while_the_seed_changes(data, tmp_path, capsys):
    runs = {}
    for name, extra in (("s1", ["--seed", "1", "--split-seed", "0"]),
                        ("s2", ["--seed", "2", "--split-seed", "0"]),
                        ("s3", ["--seed", "3"])):
        code, err = _run(_train(data, tmp_path / name, "--epochs", "1", *extra), capsys)
        assert code == 0, err
        runs[name] = _test_paths(tmp_path / name)
    assert runs["s1"] == runs["s2"]
    assert runs["s3"] != runs["s1"]  # without split_seed the split follows the seed, as before
    w1 = read_json(tmp_path / "s1" / "checkpoints" / "best.json")
    assert w1["model"] == "simple_cnn"


def test_epoch_seeds_of_neighbouring_run_seeds_do_not_overlap():
    from medscope.core.runtime import epoch_seed

    seeds = {(s, e): epoch_seed(s, e) for s in range(20) for e in range(50)}
    assert len(set(seeds.values())) == len(seeds)
    assert epoch_seed(0, 1) != epoch_seed(1, 0)


# ---------------------------------------------------------------- bug 10: the decode cache


def test_cache_key_has_decoder_version_and_cache_commands(data, tmp_path, capsys, monkeypatch):
    import medscope.data.cache as cache
    from medscope.data.sources import load_source

    where = tmp_path / "cache"
    samples = load_source(data).samples
    cache.decode_images(samples, 16, 3, cache_dir=where, progress=False)
    key = cache.dataset_key(samples, 16, 3)
    monkeypatch.setattr(cache, "decoder_version", lambda: "a-newer-decoder")
    assert cache.dataset_key(samples, 16, 3) != key  # a changed decoder never serves old pixels
    cache.decode_images(samples, 16, 3, cache_dir=where, progress=False)
    from medscope.data.duplicates import HASH_CACHE, sample_hashes

    sample_hashes(samples, where)
    assert (where / HASH_CACHE).is_file()
    code, _ = _run(["cache", "info", "--cache-dir", str(where)], capsys)
    assert code == 0
    assert main(["cache", "info", "--cache-dir", str(where)]) == 0
    listing = capsys.readouterr().out
    assert "2 dataset(s)" in listing and f"{len(samples)} images" in listing
    assert main(["cache", "clear", "--cache-dir", str(where)]) == 0
    assert "removed 2 cached dataset(s)" in capsys.readouterr().out
    assert not list(where.glob("*.npy"))
    assert not (where / HASH_CACHE).exists()  # the duplicates' hashes go with the pixels


def test_cache_prunes_least_recently_used_datasets(data, tmp_path):
    import medscope.data.cache as cache
    from medscope.data.sources import load_source

    where = tmp_path / "cache"
    samples = load_source(data).samples
    for size in (16, 20, 24):
        cache.decode_images(samples, size, 3, cache_dir=where, progress=False)
    entries = cache.cache_entries(where)
    newest = entries[0].key
    removed = cache.prune_cache(where, entries[0].bytes + 1)
    assert len(removed) == 2 and [e.key for e in cache.cache_entries(where)] == [newest]


# ---------------------------------------------------------------- bug 11: multi-label


def _one_finding_csv(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows = []
    for i in range(24):
        finding = ["No Finding", "Effusion", "Mass"][i % 3]
        img = (rng.random((16, 16)) * 60 + 80 * (i % 3)).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i}.png")
        rows.append((f"{i}.png", finding))
    rows[0] = ("0.png", "Effusion|Mass")  # only in the second file
    with (root / "one.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), *rows[1:]])
    with (root / "both.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), *rows])
    return root


def test_multilabel_setting_for_one_finding_per_image(tmp_path, capsys):
    root = _one_finding_csv(tmp_path / "xray")
    out = tmp_path / "run"
    code, err = _run(_train(root / "one.csv", out, "--epochs", "1", "--in-chans", "1",
                            "--set", "data.multilabel=true", "--set", "data.mixup=0.2"), capsys)
    assert code == 0, err
    meta = read_json(out / "checkpoints" / "best.json")
    assert meta["multilabel"] is True and meta["classes"] == ["Effusion", "Mass"]
    assert "ignoring data.mixup/data.cutmix" in err
    code, err = _run(_train(root / "both.csv", tmp_path / "r2", "--in-chans", "1",
                            "--set", "data.multilabel=false"), capsys)
    assert code == 2 and "both.csv: row 2 holds several labels" in err


def test_report_dataset_table_counts_multilabel_rows():
    from medscope.report.html import _dataset_table

    rows = [{"label": "A|B", "split": "train"}, {"label": "A", "split": "test"},
            {"label": "", "split": "train"}]
    table = _dataset_table(rows, ["A", "B"])
    assert "<td>A</td><td>1</td><td>0</td><td>1</td><td>2</td>" in table.replace("\n", "")
    assert "<td>images</td><td>2</td><td>0</td><td>1</td><td>3</td>" in table.replace("\n", "")


# ---------------------------------------------------------------- bug 12: no import side effects


@pytest.mark.slow
def test_inference_imports_carry_no_training_side_effects():
    code = ("import sys, medscope.predict, medscope.api; "
            "print('medscope.train.engine' in sys.modules and "
            "'set_flush_denormal' in open(sys.modules['medscope.train.engine'].__file__).read()"
            ".split('def flush_denormals')[0])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    probe = ("import sys, medscope.predict; "
             "print(sorted(m for m in sys.modules if m.startswith('medscope.train')))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert "medscope.train.engine" not in proc.stdout
