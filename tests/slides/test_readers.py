"""Readers: which backend opens what, levels and mpp, and damaged files as one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medscope.errors import MedscopeError
from medscope.slides.readers import (
    PillowReader,
    SlideReader,
    TileReadError,
    nearest_level,
    open_reader,
)
from tests.slides.conftest import corrupt_tile, tissue_image, write_pyramid


def test_nearest_level_never_coarser_than_asked():
    ds = (1.0, 2.0, 4.0, 16.0)
    assert nearest_level(ds, 1.0) == 0
    assert nearest_level(ds, 3.9) == 1
    assert nearest_level(ds, 4.0) == 2
    assert nearest_level(ds, 15.0) == 2
    assert nearest_level(ds, 100.0) == 3
    assert nearest_level(ds, 0.5) == 0


def test_pyramidal_tiff_opens_with_openslide_levels_and_mpp(slide_tif):
    with open_reader(slide_tif) as reader:
        assert isinstance(reader, SlideReader)
        assert reader.kind == "openslide"
        assert reader.level_dimensions == ((1536, 1024), (768, 512), (384, 256))
        assert reader.level_downsamples == (1.0, 2.0, 4.0)
        assert reader.mpp == pytest.approx(0.5)
        region = reader.read_region(400, 300, 1, 50, 40)
        assert region.shape == (40, 50, 3) and region.dtype == np.uint8
        assert reader.thumbnail(200).shape == (133, 200, 3)


def test_caller_mpp_overrides_the_file(slide_tif):
    with open_reader(slide_tif, mpp=0.25) as reader:
        assert reader.mpp == 0.25


def test_ome_tiff_pyramid_goes_to_tiffslide(tmp_path):
    path = write_pyramid(tmp_path / "s.ome.tif", tissue_image(512, 512, (100, 100, 400, 400)),
                         ome=True)
    with open_reader(path) as reader:
        assert reader.kind == "tiffslide"  # OpenSlide would see only level 0
        assert len(reader.level_dimensions) == 3
        assert reader.read_region(0, 0, 2, 32, 32).shape == (32, 32, 3)


def test_micrographs_go_to_pillow(tmp_path):
    img = tissue_image(300, 200, (50, 50, 250, 150))
    Image.fromarray(img).save(tmp_path / "m.png")
    Image.fromarray(img).save(tmp_path / "m.tif")  # striped, not tiled: a micrograph
    for name in ("m.png", "m.tif"):
        with open_reader(tmp_path / name) as reader:
            assert isinstance(reader, PillowReader)
            assert reader.level_dimensions == ((300, 200),)
            assert np.array_equal(reader.read_region(10, 20, 0, 30, 40), img[20:60, 10:40])


def test_regions_outside_an_image_are_white():
    reader = PillowReader.from_array(np.zeros((10, 10, 3), dtype=np.uint8))
    region = reader.read_region(5, 5, 0, 10, 10)
    assert region[:5, :5].max() == 0 and region[5:, 5:].min() == 255


def test_truncated_pyramid_is_one_line_naming_the_file(slide_tif):
    data = slide_tif.read_bytes()
    slide_tif.write_bytes(data[:len(data) // 2])
    with pytest.raises(MedscopeError) as err:
        open_reader(slide_tif)
    message = str(err.value)
    assert str(slide_tif) in message and "truncated" in message and "\n" not in message


@pytest.mark.parametrize("name, content", [("x.svs", b"not a slide at all" * 10),
                                           ("x.mrxs", b"junk"), ("x.tif", b"II*\x00junk")])
def test_corrupt_slide_files_are_one_line(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MedscopeError) as err:
        open_reader(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(MedscopeError, match="file not found"):
        open_reader(tmp_path / "none.svs")


def test_a_tile_that_fails_to_decode_leaves_the_slide_usable(slide_tif):
    corrupt_tile(slide_tif, 3 * 12 + 3)  # 128 px tiles, 12 a row: the tile at (384, 384)
    with open_reader(slide_tif) as reader:
        good = reader.read_region(0, 0, 0, 64, 64)
        with pytest.raises(TileReadError):
            reader.read_region(390, 390, 0, 64, 64)
        # OpenSlide's handle stays broken after an error; the reader reopened it
        assert np.array_equal(reader.read_region(0, 0, 0, 64, 64), good)


def test_uploads_are_read_from_bytes(tmp_path):
    import io

    buf = io.BytesIO()
    Image.fromarray(tissue_image(64, 48, None)).save(buf, format="PNG")
    reader = PillowReader.from_bytes(buf.getvalue(), name="up.png")
    assert reader.level_dimensions == ((64, 48),) and str(reader.path) == "up.png"
    with pytest.raises(MedscopeError, match="up.png: "):
        PillowReader.from_bytes(b"\x89PNG broken", name="up.png")
