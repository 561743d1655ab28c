"""The tissue finder: stained areas found, a blank slide found empty, coverage per tile."""

from __future__ import annotations

import numpy as np
import pytest

from medscope.slides.tissue import find_tissue, whole_field
from tests.slides.conftest import tissue_image


def test_finds_the_stained_area_only():
    thumb = tissue_image(400, 200, (100, 50, 300, 150))
    tissue = find_tissue(thumb, (4000, 2000))
    assert tissue.found
    assert tissue.fraction == pytest.approx(0.25, abs=0.03)
    assert tissue.mask[100, 200] and not tissue.mask[10, 10]


def test_blank_and_noisy_grey_slides_have_no_tissue():
    rng = np.random.default_rng(0)
    blank = np.full((200, 300, 3), 240, dtype=np.uint8)
    grey_noise = np.clip(230 + rng.normal(0, 4, (200, 300, 1)), 0, 255).repeat(3, 2)
    black = np.zeros((200, 300, 3), dtype=np.uint8)
    for thumb in (blank, grey_noise.astype(np.uint8), black):
        tissue = find_tissue(thumb, (3000, 2000))
        assert not tissue.found and tissue.fraction == 0.0


def test_coverage_and_selection_in_level0_pixels():
    thumb = tissue_image(400, 200, (100, 50, 300, 150))
    tissue = find_tissue(thumb, (4000, 2000))
    origins = [(0, 0), (1500, 800), (950, 450)]  # outside, inside, on the corner
    cover = tissue.coverage(origins, 200)
    assert cover[0] == 0.0 and cover[1] == pytest.approx(1.0)
    assert cover[2] == pytest.approx(150 * 150 / 200 ** 2, abs=0.03)
    assert tissue.select(origins, 200, min_coverage=0.05) == [(1500, 800), (950, 450)]
    assert tissue.select(origins, 200, min_coverage=0.9) == [(1500, 800)]


def test_whole_field_selects_everything():
    field = whole_field((1000, 500))
    assert field.found
    assert field.select([(0, 0), (800, 300)], 200) == [(0, 0), (800, 300)]
