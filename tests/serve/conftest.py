"""A served tiny model, in process (TestClient) and on a real loopback socket (uvicorn)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def scaled_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the tiny run whose checkpoint records 40 px training tiles (its images are
    40 px): an image of 60 px or more a side is tiled under ``tiles=auto``."""
    from medscope.core.checkpoint import read_meta, write_meta
    from medscope.run import RunDir

    root = shutil.copytree(trained_run.root, tmp_path_factory.mktemp("scaled") / "tiny-scaled")
    best = RunDir(root).best
    meta = read_meta(best)
    write_meta(best, meta.model_copy(update={"scale": {"tile_px": 40, "stride_px": 40,
                                                       "origin": "image sizes"}}))
    return root


@pytest.fixture(scope="session")
def served_scaled(scaled_run):
    from medscope.serve import load_models

    return load_models([scaled_run])


@pytest.fixture(scope="session")
def served(trained_run):
    from medscope.serve import load_models

    return load_models([trained_run.root])


@pytest.fixture
def make_client(served):
    from fastapi.testclient import TestClient

    from medscope.serve import create_app

    def make(**options) -> TestClient:
        return TestClient(create_app(served, **options))

    return make


@pytest.fixture(scope="session")
def live_slides(image_folder, tmp_path_factory) -> Path:
    """The live server's slides folder: one 160 x 120 micrograph in a sub-folder."""
    from PIL import Image

    from tests.serve.test_tiled import mosaic

    root = tmp_path_factory.mktemp("live-slides")
    (root / "day1").mkdir()
    Image.fromarray(mosaic(image_folder, "gamma")).save(root / "day1" / "micrograph.png")
    return root


@pytest.fixture(scope="session")
def live_url(scaled_run, live_slides) -> Iterator[str]:
    """The app under uvicorn in a background thread on a free loopback port; always stopped.
    It serves the tiny run (the copy that records its scale, so large images are tiled)
    twice (ids ``tiny-scaled`` and ``tiny-scaled-2``) so that the page has a picker, and a
    slides folder."""
    import uvicorn

    from medscope.serve import create_app, load_models

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    app = create_app(load_models([scaled_run] * 2), slides_dir=live_slides)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        if not server.started:
            pytest.fail("uvicorn did not start within 20 s")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
