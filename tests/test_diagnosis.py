"""Large images through ``predict``: the tiling rule, the aggregated call and its outputs."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from medscope.core.checkpoint import read_meta, write_meta
from medscope.diagnosis import TILE_FACTOR, TilePlan, tile_plan, wants_tiles
from medscope.errors import MedscopeError
from medscope.predict import load_models, predict_files
from medscope.run import RunDir


@pytest.fixture
def scaled_run(trained_run, tmp_path):
    """A copy of the tiny run whose checkpoint records 40 px training tiles."""
    root = shutil.copytree(trained_run.root, tmp_path / "run")
    best = RunDir(root).best
    meta = read_meta(best)
    # No tile is unusual here (the OOD check has its own tests): every kept tile aggregates.
    write_meta(best, meta.model_copy(update={"scale": {"tile_px": 40, "stride_px": 40,
                                                       "origin": "image sizes"},
                                             "ood": {**meta.ood, "threshold": 1e30}}))
    return root


def _mosaic(image_folder, cls, path):
    """Four of the class's 40 px images side by side: an 80 px 'micrograph'."""
    tiles = [np.asarray(Image.open(p).convert("RGB"))
             for p in sorted((image_folder / cls).glob("*.png"))[:4]]
    Image.fromarray(np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])).save(path)
    return tiles


def test_tiled_call_is_the_mean_of_its_tiles(scaled_run, image_folder, tmp_path):
    tiles = _mosaic(image_folder, "beta", tmp_path / "big.png")
    for i, t in enumerate(tiles):
        Image.fromarray(t).save(tmp_path / f"tile{i}.png")
    small = [tmp_path / f"tile{i}.png" for i in range(4)]
    out = tmp_path / "pred.csv"
    rows = predict_files(scaled_run, [tmp_path / "big.png", *small], out, precision="fp32",
                         progress=False, tiles_dir=tmp_path / "tiles")
    big, whole = rows[0], rows[1:]
    assert big["tiled"] == "yes" and all("tiled" not in r for r in whole)
    with (tmp_path / "tiles" / "big.tiles.csv").open() as fh:
        tile_rows = list(csv.DictReader(fh))
    kept = [int(r["y"]) // 40 * 2 + int(r["x"]) // 40 for r in tile_rows if r["kept"] == "1"]
    assert len(tile_rows) == 4 and kept and big["tiles_kept"] == len(kept)
    assert big["tiles_dropped"] == 4 - len(kept)
    classes = load_models(scaled_run, precision="fp32")[0].classes
    mean = np.mean([[whole[i][f"p_{c}"] for c in classes] for i in kept], axis=0)
    assert np.allclose([big[f"p_{c}"] for c in classes], mean, atol=1e-5)
    assert (tmp_path / "tiles" / "big.heatmap.png").stat().st_size > 1000
    with out.open() as fh:
        header = next(csv.reader(fh))
    assert header[-5:] == ["tiled", "tiles_kept", "tiles_unusual", "tiles_dropped",
                           "tiles_failed"]
    assert header[4:6] == ["refer_to_expert", "refer_reason"]


def test_tiles_off_squashes_and_no_scale_never_tiles(scaled_run, image_folder, tmp_path):
    _mosaic(image_folder, "beta", tmp_path / "big.png")
    off = predict_files(scaled_run, [tmp_path / "big.png"], tiles="off", precision="fp32",
                        progress=False)
    assert "tiled" not in off[0] and off[0]["prediction"]
    unscaled = shutil.copytree(scaled_run, tmp_path / "unscaled")  # as an older checkpoint
    best = RunDir(unscaled).best
    write_meta(best, read_meta(best).model_copy(update={"scale": None}))
    rows = predict_files(unscaled, [tmp_path / "big.png"], precision="fp32", progress=False)
    assert "tiled" not in rows[0]
    with pytest.raises(MedscopeError, match="records no training scale"):
        predict_files(unscaled, [tmp_path / "big.png"], tiles="on", progress=False)
    with pytest.raises(MedscopeError, match="--tiles 'sometimes'"):
        predict_files(scaled_run, [tmp_path / "big.png"], tiles="sometimes", progress=False)


def test_blank_micrograph_is_referred_with_no_usable_field(scaled_run, tmp_path):
    Image.fromarray(np.zeros((120, 120, 3), np.uint8)).save(tmp_path / "black.png")
    row = predict_files(scaled_run, [tmp_path / "black.png"], progress=False)[0]
    assert row["tiled"] == "yes" and row["tiles_kept"] == 0
    assert (row["prediction"], row["refer_to_expert"], row["refer_reason"]) == \
        ("", "yes", "no usable field")


def test_auto_rule(tmp_path):
    plan = TilePlan(tile_px=100, stride_px=100)
    side = int(TILE_FACTOR * 100)
    for name, size in (("at.png", side), ("below.png", side - 1)):
        Image.new("RGB", (size, size + 50)).save(tmp_path / name)
    assert wants_tiles(tmp_path / "at.png", plan, "auto")
    assert not wants_tiles(tmp_path / "below.png", plan, "auto")
    assert wants_tiles(tmp_path / "below.png", plan, "on")
    assert wants_tiles(tmp_path / "slide.svs", plan, "auto")  # a WSI is always tiled
    assert not wants_tiles(tmp_path / "at.png", None, "auto")


def test_tile_size_overrides_the_recorded_scale(scaled_run):
    models = load_models(scaled_run, precision="fp32")
    assert tile_plan(models, "auto") == TilePlan(40, 40, None)
    assert tile_plan(models, "auto", tile_size=64) == TilePlan(64, 64, None)
    assert tile_plan(models, "off") is None


def test_tissue_option_reads_tiles_only_on_specimen(scaled_run, image_folder, tmp_path):
    """``tissue="on"`` (``--tissue on``) reads a micrograph's tiles only where the tissue
    finder sees specimen; ``off`` (the micrograph default) reads the whole field and lets the
    artifact filter drop the glass."""
    tiles = _mosaic(image_folder, "beta", tmp_path / "m.png")
    glass = np.full((40, 40, 3), 235, np.uint8)  # grey glass: unsaturated, never tissue
    Image.fromarray(np.vstack([np.hstack([tiles[0], glass]), np.hstack([tiles[1], glass])])
                    ).save(tmp_path / "half.png")
    read = {}
    for mode in ("off", "on"):
        predict_files(scaled_run, [tmp_path / "half.png"], precision="fp32", progress=False,
                      tissue=mode, tiles_dir=tmp_path / mode)
        read[mode] = {(r["x"], r["y"]) for r in _tile_csv(tmp_path / mode / "half.tiles.csv")}
    assert read["off"] == {("0", "0"), ("40", "0"), ("0", "40"), ("40", "40")}
    assert read["on"] == {("0", "0"), ("0", "40")}
    assert tile_plan(load_models(scaled_run, precision="fp32"), "auto", tissue="on") == \
        TilePlan(40, 40, None, "on")
    with pytest.raises(MedscopeError, match="--tissue 'always'"):
        predict_files(scaled_run, [tmp_path / "half.png"], tissue="always", progress=False)


def _wide(image_folder, cls, path):
    """Six of the class's 40 px images, 3 x 2: a 120 x 80 px 'micrograph' of six tiles."""
    tiles = [np.asarray(Image.open(p).convert("RGB"))
             for p in sorted((image_folder / cls).glob("*.png"))[:6]]
    Image.fromarray(np.vstack([np.hstack(tiles[:3]), np.hstack(tiles[3:])])).save(path)


def _tile_csv(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_explain_tiles_writes_the_most_decisive_tiles_overlays(scaled_run, image_folder,
                                                               tmp_path):
    from medscope.api import predict

    _wide(image_folder, "gamma", tmp_path / "wide.png")
    small = sorted((image_folder / "alpha").glob("*.png"))[0]  # 40 px: classified whole
    out = tmp_path / "tiles"
    rows = predict(scaled_run, [tmp_path / "wide.png", small], tiles_dir=out, explain_tiles=2,
                   precision="fp32", progress=False)
    tiles = _tile_csv(out / "wide.tiles.csv")
    call = f"prob_{rows[0]['prediction']}"
    usable = [t for t in tiles if t["kept"] == "1" and t["unusual"] == "0"]
    assert len(usable) >= 2 and list(tiles[0])[-1] == "gradcam"
    ranked = sorted(usable, key=lambda t: -float(t[call]))
    named = [t["gradcam"] for t in tiles if t["gradcam"]]
    assert sorted(named) == sorted(f"wide.tile_x{t['x']}_y{t['y']}.gradcam.png"
                                   for t in ranked[:2])
    assert float(ranked[1][call]) >= max([float(t[call]) for t in ranked[2:]], default=0)
    overlays = sorted(p.name for p in out.glob("*.gradcam.png"))
    assert overlays == sorted(named)  # nothing for the image classified whole
    for name in overlays:
        with Image.open(out / name) as img:
            assert img.size == (40, 40) and img.mode == "RGB"  # the tile's own size

    many = predict(scaled_run, [tmp_path / "wide.png"], tiles_dir=tmp_path / "all",
                   explain_tiles=100, precision="fp32", progress=False)[0]
    assert len(list((tmp_path / "all").glob("*.gradcam.png"))) == many["tiles_kept"]
    predict(scaled_run, [tmp_path / "wide.png"], tiles_dir=tmp_path / "none",
            precision="fp32", progress=False)
    assert not list((tmp_path / "none").glob("*.gradcam.png"))
    assert "gradcam" not in _tile_csv(tmp_path / "none" / "wide.tiles.csv")[0]
    with pytest.raises(MedscopeError, match="--tiles-dir"):
        predict(scaled_run, [tmp_path / "wide.png"], explain_tiles=2, progress=False)
