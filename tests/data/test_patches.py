import csv

import numpy as np
import pytest
from PIL import Image

from medscope.data.patches import PatchFilter, extract_patches, patch_stats, verdict
from medscope.data.synth import make_slide
from medscope.errors import MedscopeError

BG = np.array([230.0, 228.0, 235.0])


def _stats(patch):
    return patch_stats(patch, BG, PatchFilter())


def _background(size=100, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(BG + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8)


def test_all_black_border_patch_is_dropped():
    assert verdict(_stats(np.full((100, 100, 3), 12, np.uint8)), PatchFilter()) == "dark_border"


def test_empty_background_patch_is_dropped():
    assert verdict(_stats(_background()), PatchFilter()) == "empty"


def test_pure_noise_patch_is_dropped():
    noise = np.random.default_rng(1).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    assert verdict(_stats(noise), PatchFilter()) == "noise"


def test_patch_with_fungal_structure_is_kept():
    patch = _background()
    patch[40:52, 5:95] = (60, 70, 150)  # a stained hypha across the field
    patch[20:30, 20:30] = (60, 70, 150)
    assert verdict(_stats(patch), PatchFilter()) == "ok"


def test_thresholds_are_the_users():
    assert verdict(_stats(_background()), PatchFilter(min_tissue=0.0)) == "ok"


@pytest.mark.slow
def test_manifest_matches_files(tmp_path):
    src = tmp_path / "slides"
    for label, cls in enumerate(["hyphae", "yeast"]):
        (src / cls).mkdir(parents=True)
        slide = make_slide(label, np.random.default_rng([3, label, 0]))
        slide[:, :260] = 10  # a wide dark border on the left: those patches must go
        Image.fromarray(slide).save(src / cls / "s.png")
    dst = tmp_path / "patches"
    counts = extract_patches(src, dst, size=250, workers=1, save_dropped=True, progress=False)
    rows = list(csv.DictReader((dst / "patches.csv").open()))
    assert len(rows) == 2 * 16 and sum(counts.values()) == len(rows)
    assert counts["dark_border"] >= 8  # the whole left column of both slides
    listed = {r["patch"] for r in rows if r["kept"] == "1"}
    on_disk = {p.relative_to(dst).as_posix() for p in dst.glob("[!_]*/*.jpg")}
    assert listed == on_disk and listed
    for r in rows:
        assert (r["kept"] == "1") == (r["reason"] == "ok")
        if r["kept"] == "0":
            assert r["patch"].startswith(f"_dropped/{r['reason']}/")
        assert (dst / r["patch"]).is_file()
        if int(r["x"]) == 0:  # 250 of its 250 columns lie in the painted border
            assert r["reason"] == "dark_border"
    with Image.open(dst / sorted(listed)[0]) as im:
        assert im.size == (250, 250)


def test_existing_patches_are_not_clobbered(tmp_path):
    src = tmp_path / "s"
    (src / "a").mkdir(parents=True)
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(src / "a" / "x.png")
    extract_patches(src, tmp_path / "d", size=100, workers=1, progress=False)
    with pytest.raises(MedscopeError, match="already holds patches"):
        extract_patches(src, tmp_path / "d", size=100, workers=1, progress=False)
