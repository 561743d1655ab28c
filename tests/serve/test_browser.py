"""The page end to end in Debian's Chromium, driven by Playwright, against a live server."""

import os
import tempfile
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--no-proxy-server"]
# Chromium puts its singleton socket under TMPDIR; a Unix socket path holds at most 107 bytes,
# and `make test` points TMPDIR into the clone, whose path can be long.
SOCKET_TMPDIR_MAX = 60


def chromium_env() -> dict[str, str]:
    tmp = tempfile.gettempdir()
    return {**os.environ, "TMPDIR": tmp if len(tmp) <= SOCKET_TMPDIR_MAX else "/tmp"}


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: `make browser` (apt-get install chromium) installs it")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS, env=chromium_env(), timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


def test_page_shows_label_probabilities_and_heat_map(browser, live_url, served, image_folder,
                                                     tmp_path):
    from playwright.sync_api import expect

    image = sorted((image_folder / "gamma").glob("*.png"))[2]
    classes = next(iter(served.values())).predictor.classes
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_url + "/")
    expect(page.locator("#model-info")).to_contain_text("simple_cnn")
    expect(page.locator(".disclaimer")).to_contain_text("not a validated diagnostic device")
    page.set_input_files("#file", str(image))

    label = page.locator("#label")
    expect(label).not_to_be_empty()
    assert label.inner_text() in classes
    expect(page.locator("#bars li")).to_have_count(len(classes))
    heat = page.locator("#heatmap")
    expect(heat).to_be_visible()
    assert heat.evaluate("img => img.complete && img.naturalWidth") == 32
    page.locator("#overlay-toggle").uncheck()
    expect(heat).to_be_hidden()
    page.locator("#overlay-toggle").check()
    expect(heat).to_be_visible()

    # Kept in the test's directory when the test fails, to look at.
    shot = tmp_path / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    # Two runs served: the picker switches model and the image is analysed again.
    picker = page.locator("#model-picker")
    expect(picker).to_be_visible()
    expect(picker.locator("option")).to_have_count(2)
    second = picker.locator("option").nth(1).get_attribute("value")
    with page.expect_response(lambda r: f"model={second}" in r.url and "predict" in r.url):
        picker.select_option(second)
    expect(page.locator("#model-info")).to_contain_text(second)
    assert errors == []
    page.close()


def test_page_describes_an_ensemble(browser, live_url, served):
    # The live server holds single runs; the ensemble's /api/model answer (its shape as
    # tests/serve/test_ensemble.py checks it) is given to the page in its place.
    import json

    from playwright.sync_api import expect

    info = next(iter(served.values())).info()
    info.update(name="simple_cnn+lenet5", temperature=None,
                members=[{"name": "simple_cnn", "img_size": 32, "temperature": 0.9},
                         {"name": "lenet5", "img_size": 40, "temperature": 1.2}])
    page = browser.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.route("**/api/model?*", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(info)))
    page.route("**/api/model", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(info)))
    page.goto(live_url + "/")
    facts = page.locator("#model-info")
    expect(facts).to_contain_text("simple_cnn at 32 px (T 0.900), lenet5 at 40 px (T 1.200)")
    expect(facts).to_contain_text("each member's own, then averaged")
    expect(facts).to_contain_text("Grad-CAM of simple_cnn")
    assert errors == []
    page.close()


def test_page_shows_a_tiled_micrograph_with_its_overlay(browser, live_url, served_scaled,
                                                        image_folder, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    from tests.serve.test_tiled import mosaic

    micrograph = tmp_path / "micrograph.png"
    Image.fromarray(mosaic(image_folder, "gamma")).save(micrograph)  # 160 x 120: 12 tiles
    classes = next(iter(served_scaled.values())).predictor.classes
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_url + "/")
    expect(page.locator("#model-info")).to_contain_text("tiled at 40 px")
    page.set_input_files("#file", str(micrograph))

    expect(page.locator("#tiled-view")).to_be_visible()
    assert page.locator("#label").inner_text() in classes
    expect(page.locator("#confidence")).to_contain_text("image-level probability")
    facts = page.locator("#tile-facts")
    expect(facts).to_contain_text("12 read")
    expect(facts).to_contain_text("empty 3")  # the blank column (noisy stripes may add more)
    overlay = page.locator("#slide-overlay")
    expect(overlay).to_be_visible()
    page.wait_for_function("document.getElementById('slide-overlay').complete")
    assert overlay.evaluate("img => img.naturalWidth") == 160
    decisive = page.locator("#decisive li img")
    expect(decisive.first).to_be_visible()
    assert 0 < decisive.count() <= 4
    expect(page.locator("#marks .mark")).to_have_count(decisive.count())
    # Zoom and pan: the buttons, the wheel and a drag all move the one stage transform.
    stage = page.locator("#stage")
    fitted = stage.evaluate("s => s.style.transform")
    page.locator("#zoom-in").click()
    zoomed = stage.evaluate("s => s.style.transform")
    assert zoomed != fitted and "scale(1.5)" in zoomed
    box = page.locator("#viewer").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2 + 10)
    page.mouse.up()
    assert stage.evaluate("s => s.style.transform") != zoomed
    page.locator("#decisive button").first.click()  # zooms to the most decisive tile
    assert "scale(1)" not in stage.evaluate("s => s.style.transform")
    page.locator("#zoom-fit").click()
    assert stage.evaluate("s => s.style.transform") == fitted
    # Hovering a tile of the blank column tells why it was dropped.
    image = stage.bounding_box()
    page.mouse.move(image["x"] + image["width"] * 0.9, image["y"] + image["height"] / 2)
    expect(page.locator("#tile-tip")).to_contain_text("dropped (empty")
    shot = tmp_path / "serve_tiled.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    # tiles=off: the same upload squashed whole, today's answer.
    with page.expect_response(lambda r: "tiles=off" in r.url):
        page.locator("#tiles").select_option("off")
    expect(page.locator("#tiled-view")).to_be_hidden()
    expect(page.locator("#figure")).to_be_visible()
    assert errors == []
    page.close()


def test_page_analyses_a_slide_of_the_servers_folder(browser, live_url):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_url + "/")
    expect(page.locator("#slides-box")).to_be_visible()
    options = page.locator("#slide-picker option")
    expect(options).to_have_count(1)
    assert options.first.get_attribute("value") == "day1/micrograph.png"
    with page.expect_response(lambda r: "/api/slide?" in r.url and r.status == 200):
        page.locator("#slide-go").click()
    expect(page.locator("#tiled-view")).to_be_visible()
    expect(page.locator("#image-caption")).to_contain_text("day1/micrograph.png")
    expect(page.locator("#tile-facts")).to_contain_text("12 read")
    # No local file: the image under the overlay is the server's thumbnail.
    page.wait_for_function("document.getElementById('slide-image').naturalWidth > 0")
    assert page.locator("#slide-image").evaluate("img => img.src").startswith("data:image/jpeg")
    assert errors == []
    page.close()
