"""A served tiny model, in process (TestClient) and on a real loopback socket (uvicorn)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest


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
def live_url(trained_run) -> Iterator[str]:
    """The app under uvicorn in a background thread on a free loopback port; always stopped.
    It serves the tiny run twice (ids ``tiny`` and ``tiny-2``) so that the page has a picker."""
    import uvicorn

    from medscope.serve import create_app, load_models

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    app = create_app(load_models([trained_run.root] * 2))
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
