"""Whole micrographs through the served API: tiled at the model's training scale, answered
with the image-level call, every tile, the heat-map overlay and the most decisive tiles; the
same call as ``medscope predict`` gives; small images as before; bad input in one line."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from medscope.serve import create_app, load_models


def mosaic(image_folder, cls: str, rows: int = 3, cols: int = 4, blank_cols: int = 1
           ) -> np.ndarray:
    """A 'micrograph': the class's 40 px images in a grid, its last ``blank_cols`` columns an
    empty white field (tiles the artifact filter drops)."""
    paths = sorted((image_folder / cls).glob("*.png"))
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    blank = np.full((40, 40, 3), 255, dtype=np.uint8)
    grid = [[tiles[(r * cols + c) % len(tiles)] if c < cols - blank_cols else blank
             for c in range(cols)] for r in range(rows)]
    return np.vstack([np.hstack(row) for row in grid])


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def post(client, data: bytes, form: dict | None = None, **params):
    return client.post("/api/predict", params=params, data=form or {},
                       files={"file": ("m.png", data, "image/png")})


@pytest.fixture(scope="module")
def client(served_scaled):
    from fastapi.testclient import TestClient

    return TestClient(create_app(served_scaled))


@pytest.fixture(scope="module")
def micrograph(image_folder) -> np.ndarray:
    return mosaic(image_folder, "gamma")


@pytest.fixture(scope="module")
def answer(client, micrograph) -> dict:
    r = post(client, png(micrograph))
    assert r.status_code == 200, r.text
    return r.json()


def test_large_upload_is_tiled_with_counts_and_every_tile(answer, served_scaled):
    classes = next(iter(served_scaled.values())).predictor.classes
    assert answer["tiled"] is True
    assert answer["image"] == {"name": "upload", "width": 160, "height": 120,
                               "reader": "image", "mpp": None}
    tiling, tiles = answer["tiling"], answer["tiles"]
    assert tiling["tile_size"] == 40 and tiling["grid"] == 12 and len(tiles) == 12
    assert tiling["kept"] + tiling["dropped_total"] + tiling["failed"] == 12
    assert sum(tiling["dropped"].values()) == tiling["dropped_total"]
    blank = [t for t in tiles if t["x"] == 120]
    assert len(blank) == 3 and all(t["verdict"] != "ok" and t["probs"] is None for t in blank)
    assert all(t["verdict"] in tiling["dropped"] for t in blank)
    kept = [t for t in tiles if t["verdict"] == "ok"]
    assert len(kept) == tiling["kept"] > 0
    assert all(len(t["probs"]) == len(classes) and t["size"] == 40 for t in kept)
    # The image's probabilities are the mean of its kept tiles' (the default aggregation),
    # less those the out-of-distribution check flagged (counted, never aggregated).
    usable = [t for t in kept if not t["unusual"]]
    assert tiling["unusual"] == len(kept) - len(usable) and usable
    mean = np.mean([t["probs"] for t in usable], axis=0)
    got = np.array([answer["probabilities"][c] for c in classes])
    np.testing.assert_allclose(got, mean, atol=1e-4)
    assert answer["label"] == classes[int(got.argmax())]
    assert answer["confidence"] == pytest.approx(float(got.max()))
    assert isinstance(answer["refer_to_expert"], bool)
    assert answer["refer_to_expert"] == (answer["refer_reason"] is not None)


def test_overlay_and_decisive_tiles(answer):
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay_png_base64"])))
    thumb = Image.open(io.BytesIO(base64.b64decode(answer["thumbnail_jpeg_base64"])))
    assert overlay.format == "PNG" and overlay.mode == "RGBA" and thumb.format == "JPEG"
    assert overlay.size == thumb.size == (160, 120)
    rgba = np.asarray(overlay)
    # Dropped tiles (the blank right column) are drawn opaque grey, kept ones in colour.
    assert (rgba[:, 120:, :3] == 128).all() and (rgba[:, 120:, 3] == 255).all()
    assert not (rgba[:, :120, :3] == 128).all()
    assert answer["overlay_class"] == answer["label"]
    decisive, label = answer["decisive"], answer["label"]
    classes = list(answer["probabilities"])
    assert 0 < len(decisive) <= 4
    shown = [d["probability"] for d in decisive]
    assert shown == sorted(shown, reverse=True)
    best_kept = max(t["probs"][classes.index(label)] for t in answer["tiles"]
                    if t["probs"] and not t["unusual"])
    assert shown[0] == pytest.approx(best_kept, abs=1e-4)
    for d in decisive:
        tile = answer["tiles"][d["index"]]
        assert (tile["x"], tile["y"], tile["verdict"]) == (d["x"], d["y"], "ok")
        assert not tile["unusual"]
        crop = Image.open(io.BytesIO(base64.b64decode(d["jpeg_base64"])))
        assert crop.size == (192, 192)


def test_served_call_is_predicts_call(answer, micrograph, scaled_run, tmp_path):
    from medscope.predict import predict_files

    path = tmp_path / "m.png"
    Image.fromarray(micrograph).save(path)
    row, = predict_files(scaled_run, [path], tmp_path / "p.csv", precision="fp32",
                         progress=False)
    assert row["tiled"] == "yes" and row["prediction"] == answer["label"]
    assert row["tiles_kept"] == answer["tiling"]["kept"]
    for name, p in answer["probabilities"].items():
        assert p == pytest.approx(row[f"p_{name}"], abs=1e-4)  # float32: tiles batch as read
    assert row["refer_reason"] == (answer["refer_reason"] or "")


def test_small_images_keep_the_whole_image_answer(client, image_folder):
    small = sorted((image_folder / "beta").glob("*.png"))[0].read_bytes()
    body = post(client, small).json()
    assert body["tiled"] is False and "tiles" not in body and "heatmap_png_base64" in body
    assert set(body) >= {"label", "confidence", "probabilities", "refer_to_expert"}


def test_tiles_option_in_query_or_form(client, micrograph):
    big = png(micrograph)
    assert post(client, big, tiles="off").json()["tiled"] is False
    assert post(client, big, form={"tiles": "off"}).json()["tiled"] is False
    # The query wins over the form.
    assert post(client, big, form={"tiles": "off"}, tiles="auto").json()["tiled"] is True
    # "on" tiles even an image smaller than one tile: the whole-image path, said so.
    tiny = png(micrograph[:30, :30])
    body = post(client, tiny, form={"tiles": "on"}).json()
    assert body["tiled"] is True and body["tiling"]["whole_image"] is True
    assert len(body["tiles"]) == 1


def test_bad_tiles_option_is_one_line(client, micrograph):
    r = post(client, png(micrograph), tiles="maybe")
    assert r.status_code == 400 and r.json() == {
        "error": "tiles 'maybe': choose from auto, on, off"}
    r = post(client, png(micrograph), form={"tiles": "all"})
    assert r.status_code == 400 and "tiles 'all'" in r.json()["error"]


def test_tiles_on_without_a_recorded_scale_is_refused(scaled_run, micrograph, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from medscope.core.checkpoint import read_meta, write_meta
    from medscope.run import RunDir

    root = shutil.copytree(scaled_run, tmp_path / "unscaled")
    best = RunDir(root).best
    write_meta(best, read_meta(best).model_copy(update={"scale": None}))
    client = TestClient(create_app(load_models([root])))
    r = post(client, png(micrograph), tiles="on")
    assert r.status_code == 400
    assert r.json()["error"] == "tiles=on: the checkpoint records no training scale"
    # auto never tiles such a model: today's answer.
    assert post(client, png(micrograph)).json()["tiled"] is False
    assert client.get("/api/model").json()["tiling"] is None


def test_model_info_states_the_tiling_scale(client):
    assert client.get("/api/model").json()["tiling"] == {"tile_px": 40, "stride_px": 40,
                                                         "mpp": None}
    config = client.get("/api/config").json()
    assert config["tiles"] == ["auto", "on", "off"] and config["slides"] is False


def test_images_can_be_left_out(client, micrograph):
    body = post(client, png(micrograph), heatmap="false").json()
    assert body["tiled"] is True and body["overlay_png_base64"] is None
    assert body["thumbnail_jpeg_base64"] is None
    assert all(d["jpeg_base64"] is None for d in body["decisive"])


def test_large_upload_over_the_limit_is_413_and_never_decoded(served_scaled, monkeypatch):
    from fastapi.testclient import TestClient

    import medscope.serve.app as app

    decoded: list = []
    monkeypatch.setattr(app, "open_image_bytes", lambda *a: decoded.append(a))
    monkeypatch.setattr(app, "read_image_bytes", lambda *a: decoded.append(a))
    client = TestClient(create_app(served_scaled, max_upload_mb=0.05))
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    data = png(noise)
    assert len(data) > 0.05 * 2**20
    r = post(client, data)
    assert r.status_code == 413 and r.json()["error"].startswith("upload larger than 0.05 MB")
    assert decoded == []


def test_truncated_large_upload_is_one_line(client, micrograph):
    data = png(np.tile(micrograph, (2, 2, 1)))  # 320 x 240: tiled by its header
    r = post(client, data[: len(data) // 2])
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.startswith("upload is not a usable image") and "\n" not in error


def test_overlapping_tiles_show_their_mean_not_the_last_painted():
    from types import SimpleNamespace

    from medscope.slides.outputs import heat_overlay, mean_heat
    from medscope.slides.tiling import TileRecord

    def tile(x, y, p=None, verdict="ok"):
        return TileRecord(x, y, 20, verdict, probs=None if p is None else np.array([p, 1 - p]))

    # 40 x 20 px, 20 px tiles at a 10 px stride: 0.9 and 0.3 kept, the third dropped.
    result = SimpleNamespace(thumbnail=np.zeros((20, 40, 3), np.uint8), width=40, height=20,
                             tiles=[tile(0, 0, 0.9), tile(10, 0, 0.3), tile(20, 0, None, "empty")])
    heat = mean_heat(result, 0)
    assert heat[5, 5] == pytest.approx(0.9)  # only the first tile
    assert heat[5, 15] == pytest.approx(0.6)  # both kept tiles: their mean, not 0.3
    assert heat[5, 25] == pytest.approx(0.3)  # a kept and a dropped tile: the kept one
    assert heat[5, 35] == -1.0  # only the dropped tile
    # A tile the out-of-distribution check flagged is not in the mean; alone, it is -2 (red).
    result.tiles[1].unusual = True
    flagged = mean_heat(result, 0)
    assert flagged[5, 15] == pytest.approx(0.9) and flagged[5, 25] == -2.0
    # Without overlap it is predict's map.
    result.tiles = [tile(0, 0, 0.9), tile(20, 0, None, "empty")]
    np.testing.assert_array_equal(mean_heat(result, 0), heat_overlay(result, 0))


@pytest.mark.parametrize(("pixels", "reason"), [
    (np.zeros((40, 40, 3), np.uint8), "blank image"),  # a black frame, classified whole
    (np.full((1, 1, 3), 200, np.uint8), "degenerate image"),  # a 1 x 1 pixel
    (np.full((1, 2000, 3), 90, np.uint8), "degenerate image"),  # a strip: never tiled
])
def test_images_without_a_specimen_are_referred_saying_why(client, pixels, reason):
    body = post(client, png(pixels)).json()
    assert body["tiled"] is False and body["label"] == ""
    assert body["refer_to_expert"] is True and body["refer_reason"] == reason


def test_a_large_blank_frame_has_no_usable_field(client):
    body = post(client, png(np.zeros((200, 200, 3), np.uint8))).json()
    assert body["tiled"] is True and body["label"] is None and body["probabilities"] is None
    assert body["refer_to_expert"] is True and body["refer_reason"] == "no usable field"
    assert body["tiling"]["kept"] == 0 and body["decisive"] == []
