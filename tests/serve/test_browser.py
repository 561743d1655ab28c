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
