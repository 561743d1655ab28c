"""Slides too big to upload: served from the folder named at start, listed, analysed by name;
a name leading outside the folder is refused before anything is read."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from medscope.errors import MedscopeError
from medscope.serve import create_app
from tests.serve.test_tiled import mosaic
from tests.slides.conftest import tissue_image, write_pyramid


@pytest.fixture(scope="module")
def layout(tmp_path_factory, image_folder):
    """DIR with a micrograph, a pyramidal slide, a small image, a sub-folder, things that are
    not to be listed, and symlinks leading in and out; OUTSIDE beside it."""
    base = tmp_path_factory.mktemp("slides")
    root, outside = base / "DIR", base / "OUTSIDE"
    (root / "sub").mkdir(parents=True)
    (root / ".private").mkdir()
    outside.mkdir()
    Image.fromarray(mosaic(image_folder, "gamma")).save(root / "micrograph.png")
    write_pyramid(root / "sub" / "slide.tif", tissue_image(512, 384, (64, 64, 448, 320)))
    Image.open(sorted((image_folder / "beta").glob("*.png"))[0]).save(root / "sub" / "small.png")
    Image.fromarray(mosaic(image_folder, "alpha")).save(root / ".hidden.png")
    Image.fromarray(mosaic(image_folder, "alpha")).save(root / ".private" / "p.png")
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(mosaic(image_folder, "alpha")).save(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "link-out.png")
    os.symlink(outside, root / "dir-out")
    os.symlink(root / "micrograph.png", root / "sub" / "alias.png")
    return root, outside


@pytest.fixture(scope="module")
def client(served_scaled, layout):
    from fastapi.testclient import TestClient

    return TestClient(create_app(served_scaled, slides_dir=layout[0]))


def test_listing_is_recursive_and_stays_inside(client):
    body = client.get("/api/slides").json()
    assert [s["name"] for s in body["slides"]] == [
        "micrograph.png", "sub/alias.png", "sub/slide.tif", "sub/small.png"]
    assert body["truncated"] is False and all(s["bytes"] > 0 for s in body["slides"])
    assert client.get("/api/config").json()["slides"] is True


def test_a_listed_micrograph_is_analysed_in_tiles(client):
    r = client.post("/api/slide", params={"name": "micrograph.png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tiled"] is True and body["image"]["name"] == "micrograph.png"
    assert body["tiling"]["grid"] == 12 and len(body["tiles"]) == 12
    assert body["label"] in body["probabilities"] and body["overlay_png_base64"]
    # Reached through a symlink inside the folder: the same image, the same call.
    alias = client.post("/api/slide", params={"name": "sub/alias.png"}).json()
    assert alias["probabilities"] == pytest.approx(body["probabilities"], abs=1e-4)


def test_a_pyramidal_slide_is_tiled_on_its_tissue(client):
    body = client.post("/api/slide", params={"name": "sub/slide.tif", "heatmap": "false"}).json()
    assert body["tiled"] is True and body["image"]["width"] == 512
    assert body["tiling"]["tissue_found"] is True
    assert 0 < body["tiling"]["read"] < body["tiling"]["grid"]  # only tiles on tissue read
    assert body["overlay_png_base64"] is None


def test_a_small_image_is_analysed_whole(client):
    body = client.post("/api/slide", params={"name": "sub/small.png"}).json()
    assert body["tiled"] is False and body["image"] == {"name": "sub/small.png"}
    assert "heatmap_png_base64" in body


@pytest.mark.parametrize(("name", "status", "words"), [
    ("../OUTSIDE/secret.png", 400, "'..' is refused"),
    ("sub/../../OUTSIDE/secret.png", 400, "'..' is refused"),
    ("sub/../micrograph.png", 400, "'..' is refused"),
    ("..\\OUTSIDE\\secret.png", 400, "'..' is refused"),
    ("/etc/passwd", 400, "absolute paths are refused"),
    ("ABSOLUTE", 400, "absolute paths are refused"),
    ("C:\\Windows\\win.ini", 400, "absolute paths are refused"),
    ("link-out.png", 403, "leads outside the slides folder"),
    ("dir-out/secret.png", 403, "leads outside the slides folder"),
    (".hidden.png", 400, "hidden files"),
    (".private/p.png", 400, "hidden files"),
    ("notes.txt", 404, "no slide"),
    ("missing.png", 404, "no slide"),
    ("", 400, "give the slide's name"),
])
def test_names_outside_the_folder_are_refused_unread(client, layout, monkeypatch, name, status,
                                                    words):
    import medscope.serve.app as app

    opened: list = []
    monkeypatch.setattr(app, "open_reader", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(app.ServedModel, "analyse_file", lambda *a, **k: opened.append(a))
    if name == "ABSOLUTE":
        name = str(layout[1] / "secret.png")
    r = client.post("/api/slide", params={"name": name})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error and "\n" not in error
    assert opened == []


def test_a_truncated_slide_is_one_line_without_the_server_path(served_scaled, tmp_path):
    from fastapi.testclient import TestClient

    path = write_pyramid(tmp_path / "cut.tif", tissue_image(512, 384, (64, 64, 448, 320)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    client = TestClient(create_app(served_scaled, slides_dir=tmp_path))
    r = client.post("/api/slide", params={"name": "cut.tif"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.startswith("cut.tif: ") and "truncated" in error
    assert str(tmp_path) not in error and "\n" not in error


def test_without_a_slides_folder_the_routes_say_how_to_get_one(make_client):
    client = make_client()
    for r in (client.get("/api/slides"), client.post("/api/slide", params={"name": "a.png"})):
        assert r.status_code == 404 and "--slides DIR" in r.json()["error"]


def test_slides_dir_must_be_a_folder(served_scaled, tmp_path):
    with pytest.raises(MedscopeError, match="not a folder"):
        create_app(served_scaled, slides_dir=tmp_path / "nope")


def test_slide_routes_need_the_token(served_scaled, layout):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(served_scaled, slides_dir=layout[0], token="t0k"))
    assert client.get("/api/slides").status_code == 401
    assert client.post("/api/slide", params={"name": "micrograph.png"}).status_code == 401
    ok = client.get("/api/slides", headers={"Authorization": "Bearer t0k"})
    assert ok.status_code == 200 and ok.json()["slides"]


def test_listing_is_capped(served_scaled, tmp_path):
    from medscope.serve.slidedir import SlideDir

    for i in range(5):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{i}.png")
    listing = SlideDir.open(tmp_path).listing(limit=3)
    assert [s["name"] for s in listing["slides"]] == ["0.png", "1.png", "2.png"]
    assert listing["truncated"] is True


def test_the_api_and_cli_name_the_slides_folder(scaled_run, layout, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from medscope import api
    from medscope.cli import main

    app = api.create_app([scaled_run], slides=layout[0])
    names = [s["name"] for s in TestClient(app).get("/api/slides").json()["slides"]]
    assert "micrograph.png" in names and all(not n.startswith("/") for n in names)
    assert main(["serve", str(scaled_run), "--slides", str(tmp_path / "nowhere")]) == 2
    assert "--slides" in capsys.readouterr().err
