"""``medscope predict`` under torchrun: the inputs shared out over 2 gloo CPU processes give
the files one process writes, and a user error on one rank is one line on every rank's exit."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from PIL import Image

from medscope.cli import main
from medscope.predict import PREDICT_CHUNK, collect_images, work_rounds
from tests.test_diagnosis import _mosaic, scaled_run  # noqa: F401 (a fixture)

SRC = Path(__file__).resolve().parents[1] / "src"
needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available here")
SETTINGS = ["--device", "cpu", "--precision", "fp32", "--batch-size", "3"]


def _torchrun(*args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1",
           "MEDSCOPE_DIST_TIMEOUT": "120"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *launcher, "-m", "medscope", "predict",
                           "-q", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def archive(image_folder, tmp_path) -> Path:
    """Whole images, three micrographs to tile (two named big.png in two folders, one larger)
    and an unreadable file."""
    root = tmp_path / "archive"
    (root / "whole").mkdir(parents=True)
    for cls in ("alpha", "beta", "gamma"):
        for p in sorted((image_folder / cls).glob("*.png"))[:3]:
            shutil.copy(p, root / "whole" / p.name)
    for folder, cls in (("a", "beta"), ("b", "gamma")):
        (root / folder).mkdir()
        _mosaic(image_folder, cls, root / folder / "big.png")
    tiles = [np.asarray(Image.open(p).convert("RGB"))
             for p in sorted((image_folder / "alpha").glob("*.png"))[:6]]
    Image.fromarray(np.vstack([np.hstack(tiles[:3]), np.hstack(tiles[3:])])).save(
        root / "wide.png")
    (root / "whole" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _same_rows(got: list[dict[str, str]], want: list[dict[str, str]]) -> None:
    assert [list(r) for r in got] == [list(r) for r in want]  # same columns
    assert [r.get("file") or r["x"] + "," + r["y"] for r in got] == \
        [r.get("file") or r["x"] + "," + r["y"] for r in want]  # same rows, same order
    for g, w in zip(got, want, strict=True):
        for key, value in w.items():
            if key == "top_k":
                assert [c.split(":")[0] for c in g[key].split("|")] == \
                    [c.split(":")[0] for c in value.split("|")]
            elif _is_number(value) and "." in value:
                assert float(g[key]) == pytest.approx(float(value), abs=2e-6), key
            else:
                assert g[key] == value, key


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.mark.slow
@needs_gloo
def test_two_gloo_processes_write_what_one_process_writes(scaled_run, archive,  # noqa: F811
                                                          tmp_path):
    done = _torchrun(str(scaled_run), str(archive), "--out", str(tmp_path / "A.csv"),
                     "--tiles-dir", str(tmp_path / "A"), "--explain-tiles", "1", *SETTINGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote 13 predictions") == 1  # rank 0 reports for the job
    assert main(["predict", "-q", str(scaled_run), str(archive), "--out",
                 str(tmp_path / "B.csv"), "--tiles-dir", str(tmp_path / "B"),
                 "--explain-tiles", "1", *SETTINGS]) == 0
    one, two = _rows(tmp_path / "B.csv"), _rows(tmp_path / "A.csv")
    assert sum(r["tiled"] == "yes" for r in one) == 3 and sum(bool(r["error"]) for r in one) == 1
    _same_rows(two, one)
    names = sorted(p.name for p in (tmp_path / "B").iterdir())
    assert sorted(p.name for p in (tmp_path / "A").iterdir()) == names
    assert len([n for n in names if n.endswith(".tiles.csv")]) == 3
    assert len([n for n in names if n.endswith(".gradcam.png")]) == 3  # written by their rank
    assert {n.split(".")[0] for n in names} == {"00000-big", "00001-big", "wide"}
    for name in names:
        if name.endswith(".csv"):
            _same_rows(_rows(tmp_path / "A" / name), _rows(tmp_path / "B" / name))
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
@needs_gloo
def test_a_bad_slide_on_one_rank_is_one_line_and_exit_2_on_every_rank(
        scaled_run, archive, tmp_path):  # noqa: F811
    for folder in ("a", "b"):
        shutil.rmtree(archive / folder)
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide at all" * 10)
    # The larger tiled file goes first: rank 0 diagnoses wide.png, rank 1 broken.svs.
    paths = collect_images([archive, broken])
    assert work_rounds(paths, {p: p.stem for p in (archive / "wide.png", broken)}, 2)[-1] == \
        [archive / "wide.png", broken]
    # torchrun's agent stops the other workers as soon as it sees one fail (it looks every 0.1 s
    # by default): looking every 5 s lets both ranks end on their own, so that each one's exit
    # code shows it got the error (a rank left waiting would be stopped later, not exit 2).
    done = _torchrun(str(scaled_run), str(archive), str(broken), "--out",
                     str(tmp_path / "A.csv"), *SETTINGS, launcher=("--monitor-interval", "5"))
    errors = [line for line in (done.stdout + done.stderr).splitlines()
              if line.startswith("medscope: error:")]
    assert len(errors) == 1 and "broken.svs" in errors[0], done.stderr[-3000:]
    assert done.returncode != 0 and done.stderr.count("exitcode  : 2") == 2  # both ranks
    assert not (tmp_path / "A.csv").exists()


def test_work_rounds_partition_the_inputs(tmp_path):
    paths = [tmp_path / f"{i:04d}.png" for i in range(2 * PREDICT_CHUNK + 5)]
    tiled = {tmp_path / f"t{i}.png": f"t{i}" for i in range(5)}
    for i, p in enumerate(tiled):
        p.write_bytes(b"x" * (10 + (i * 7) % 5))  # sizes 10, 12, 14, 11, 13
    alone = work_rounds([*paths, *tiled], tiled, 1)
    assert [r[0] for r in alone[3:]] == list(tiled)  # one process: input order
    assert [len(r[0]) for r in alone[:3]] == [PREDICT_CHUNK, PREDICT_CHUNK, 5]
    rounds = work_rounds([*paths, *tiled], tiled, 2)
    whole = [p for r in rounds for unit in r if isinstance(unit, tuple) for p in unit]
    assert sorted(whole) == paths and len(rounds) == 2 + 3
    assert all(len(unit) <= PREDICT_CHUNK for r in rounds[:2] for unit in r)
    sizes = [p.stat().st_size for r in rounds[2:] for p in r]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) == 5  # largest first
