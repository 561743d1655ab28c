"""diagnose() end to end on generated micrographs and pyramids, and what it writes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medscope.errors import MedscopeError
from medscope.slides.aggregate import NO_USABLE_FIELD, ReferRule
from medscope.slides.diagnose import diagnose
from medscope.slides.outputs import image_row, tile_rows, write_heatmap, write_tiles_csv
from medscope.slides.readers import PillowReader
from tests.slides.conftest import (
    CLASSES,
    colour_classify,
    corrupt_tile,
    tissue_image,
    write_pyramid,
)


def test_a_slide_is_tiled_on_tissue_and_called(slide_tif, tmp_path):
    result = diagnose(slide_tif, colour_classify, 128, 32, classes=CLASSES, batch_size=5)
    assert result.reader == "openslide" and not result.whole_image
    assert result.tissue_found and result.tissue_fraction == pytest.approx(0.25, abs=0.03)
    assert result.n_grid == 12 * 8 and 0 < result.n_candidates < result.n_grid
    assert result.kept == 24 and result.failed == 0  # the tissue box is 6 x 4 tiles
    assert result.prediction == "pink" and not result.refer
    assert result.probs.sum() == pytest.approx(1.0)
    kept = [t for t in result.tiles if t.kept]
    assert all(t.probs is not None for t in kept) and len(kept) == result.kept
    as_json = json.loads(json.dumps(result.to_dict(tiles=True)))  # the API's JSON as it is
    assert as_json["tiles"][0].keys() >= {"x", "y", "kept", "reason", "unusual", "probs"}
    assert as_json["prediction"] == "pink" and as_json["dropped"] == result.dropped


def test_slide_without_tissue_is_referred_no_usable_field(tmp_path):
    path = write_pyramid(tmp_path / "blank.tif", tissue_image(1024, 768, None))
    result = diagnose(path, colour_classify, 128, 32, classes=CLASSES)
    assert not result.tissue_found and result.n_candidates == 0
    assert result.label is None and result.prediction is None
    assert result.refer and result.reason == NO_USABLE_FIELD


def test_micrograph_uses_the_artifact_filter_not_the_tissue_finder(tmp_path):
    img = tissue_image(600, 400, (0, 0, 300, 400))
    img[:, 450:] = 0  # a dark field-stop border on the right
    Image.fromarray(img).save(tmp_path / "m.png")
    result = diagnose(tmp_path / "m.png", colour_classify, 100, 32, classes=CLASSES)
    assert result.reader == "image" and result.n_candidates == result.n_grid == 24
    assert result.dropped.get("dark_border", 0) >= 4 and result.dropped.get("empty", 0) >= 4
    assert result.kept == 12


def test_image_smaller_than_a_tile_takes_the_whole_image_path(tmp_path):
    Image.fromarray(tissue_image(300, 200, (0, 0, 300, 200))).save(tmp_path / "small.png")
    result = diagnose(tmp_path / "small.png", colour_classify, 500, 32, classes=CLASSES)
    assert result.whole_image and result.n_candidates == 1 and result.kept == 1
    assert result.prediction == "pink"
    assert result.reason != "too few usable tiles"  # one tile is all a whole image has


@pytest.mark.parametrize("shape", [(1, 1), (1, 2000), (5, 5)])
def test_degenerate_images_are_referred_not_guessed(shape):
    reader = PillowReader.from_array(np.full((*shape, 3), 128, dtype=np.uint8))
    result = diagnose(reader, colour_classify, 500, 32, classes=CLASSES)
    assert result.whole_image and result.tiles[0].verdict == "degenerate"
    assert result.label is None and result.reason == NO_USABLE_FIELD


def test_blank_black_frame_is_referred():
    reader = PillowReader.from_array(np.zeros((300, 300, 3), dtype=np.uint8))
    result = diagnose(reader, colour_classify, 500, 32, classes=CLASSES)
    assert result.tiles[0].verdict == "dark_border" and result.reason == NO_USABLE_FIELD


def test_a_tile_that_fails_to_decode_is_skipped_and_counted(slide_tif):
    corrupt_tile(slide_tif, 3 * 12 + 5)  # level-0 tile at (640, 384), on tissue
    # tissue="off": this small slide's thumbnail comes from level 0, where the bad tile is
    # drawn grey (no stain), so the tissue finder would not even ask for it
    result = diagnose(slide_tif, colour_classify, 128, 128, classes=CLASSES, workers=2,
                      tissue="off")
    assert result.level == 0 and result.failed == 1
    (failed,) = [t for t in result.tiles if t.verdict == "failed"]
    assert (failed.x, failed.y) == (640, 384) and failed.probs is None
    assert result.prediction == "pink"


def test_mpp_rescales_the_tile(slide_tif):
    # training patches of 128 px at 1 µm/px cover 256 px of this 0.5 µm/px slide
    result = diagnose(slide_tif, colour_classify, 128, 32, train_mpp=1.0)
    assert result.tile_size == 256 and result.mpp == pytest.approx(0.5)


def test_refer_rule_and_aggregation_are_passed_through(slide_tif):
    result = diagnose(slide_tif, colour_classify, 128, 32, aggregation="vote",
                      rule=ReferRule(min_tiles=10_000))
    assert result.aggregation == "vote" and result.reason == "too few usable tiles"
    with pytest.raises(MedscopeError, match="unknown aggregation"):
        diagnose(slide_tif, colour_classify, 128, 32, aggregation="max")


def test_a_wrong_classify_shape_is_reported(slide_tif):
    with pytest.raises(ValueError, match="expected N x K"):
        diagnose(slide_tif, lambda b: np.ones(len(b)), 128, 32)


def test_tile_csv_image_row_and_heat_map(slide_tif, tmp_path):
    result = diagnose(slide_tif, colour_classify, 128, 32, classes=CLASSES)
    csv_path = write_tiles_csv(result, tmp_path / "out" / "tiles.csv")
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == result.n_candidates
    assert {"x", "y", "size", "kept", "reason", "prob_pink", "prob_blue"} <= rows[0].keys()
    assert sum(int(r["kept"]) for r in rows) == result.kept
    row = image_row(result)
    assert row["prediction"] == "pink" and row["tiles_kept"] == result.kept
    png = write_heatmap(result, tmp_path / "out" / "heat.png")
    with Image.open(png) as img:
        assert img.format == "PNG" and min(img.size) > 200


def test_heat_map_of_an_image_without_a_call(tmp_path):
    path = write_pyramid(tmp_path / "blank.tif", tissue_image(512, 512, None))
    result = diagnose(path, colour_classify, 128, 32, classes=CLASSES, tissue="off")
    assert result.kept == 0 and result.dropped == {"empty": 16}
    assert write_heatmap(result, tmp_path / "heat.png").stat().st_size > 0


def test_a_failing_model_stops_the_reader_thread(slide_tif):
    import threading

    def broken(batch):
        raise RuntimeError("model on fire")

    with pytest.raises(RuntimeError, match="on fire"):
        diagnose(slide_tif, broken, 128, 32, batch_size=2)
    assert not any(t.name == "medscope-tiles" for t in threading.enumerate())


def test_a_reader_reused_across_calls_keeps_few_handles(slide_tif):
    from medscope.slides.readers import open_reader

    with open_reader(slide_tif) as reader:
        for _ in range(3):
            diagnose(reader, colour_classify, 128, 32, workers=2)
        assert len(reader._idle) <= 3  # one per concurrent reader, not one per call


def test_ome_tiff_through_tiffslide_with_reader_threads(tmp_path):
    img = tissue_image(1024, 768, (256, 256, 768, 512))
    path = write_pyramid(tmp_path / "s.ome.tif", img, ome=True)
    result = diagnose(path, colour_classify, 128, 32, classes=CLASSES, workers=3)
    assert result.reader == "tiffslide" and result.level == 2
    assert result.kept == 8 and result.prediction == "pink" and result.failed == 0


def _with_flags(flag):
    """A classify that also returns the OOD check's flags: ``flag(batch) -> N booleans``."""
    def classify(batch):
        return colour_classify(batch), flag(batch)
    return classify


def test_tiles_unlike_the_training_images_are_left_out_and_refer(slide_tif, tmp_path):
    from medscope.slides.aggregate import UNLIKE_TRAINING

    everything = diagnose(slide_tif, _with_flags(lambda b: np.ones(len(b), bool)), 128, 32,
                          classes=CLASSES)
    assert everything.unusual == everything.kept == 24
    assert everything.label is None and everything.reason == UNLIKE_TRAINING
    first = iter(range(10_000))
    some = diagnose(slide_tif, _with_flags(lambda b: np.array([next(first) < 3 for _ in b])),
                    128, 32, classes=CLASSES)
    assert some.unusual == 3 and some.prediction == "pink" and not some.refer
    header, rows = tile_rows(some)
    assert sum(int(r[header.index("unusual")]) for r in rows) == 3
    assert write_heatmap(some, tmp_path / "h.png").is_file()


def test_a_whole_image_unlike_the_training_images_gets_no_call(tmp_path):
    Image.fromarray(tissue_image(300, 200, (0, 0, 300, 200))).save(tmp_path / "cells.png")
    result = diagnose(tmp_path / "cells.png", _with_flags(lambda b: np.ones(len(b), bool)),
                      500, 32, classes=CLASSES)
    assert result.whole_image and result.label is None
    assert result.reason == "unlike the training images"


def test_a_tiled_single_level_micrograph_is_not_tissue_searched(tmp_path):
    # grey specimen (no stain): the tissue finder would see nothing; the filter keeps it
    img = tissue_image(512, 512, (0, 0, 512, 512))
    img[:] = img.mean(2, keepdims=True).astype(np.uint8)
    path = write_pyramid(tmp_path / "camera.tif", img, levels=1)
    result = diagnose(path, colour_classify, 128, 32)
    assert result.reader == "openslide" and result.tissue_fraction == 1.0
    assert result.kept > 0
