"""The server under load: ``medscope serve`` on 127.0.0.1, N requests from concurrent clients.

    python benchmarks/serve_load.py [--run RUN] [--requests 1000] [--clients 8]
                                    [--max-seconds 600] [--heatmap] [--out FILE]

Without ``--run`` it first trains a tiny run itself (synthetic stripes, simple_cnn, 32 px).
The server gets a token and a 1 MB upload cap; the requests are, in a seeded shuffle, 80 % valid
PNG images and 20 % invalid: corrupt bytes (400), an upload over the cap (413), a text part or a
JSON body (415), no token (401). Loopback only; it stops by itself (the count is fixed, and
``--max-seconds`` bounds the time).

Reported: requests/s, p50/p95/p99 latency, status counts. Checked (exit 1 if any fails): no 5xx
and no connection error, every invalid request got its 4xx, every valid one the label offline
prediction (``predict_files`` on the same file, batch 1) gives, the server still alive, and its
RSS grew by less than 10 % between the end of the first 200 requests and the end of the last.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
from machine import non_negative_int, positive_int  # noqa: E402
from PIL import Image  # noqa: E402

MAX_UPLOAD_MB = 1.0
RSS_WINDOW = 200
EXPECTED = {"valid": 200, "corrupt": 400, "oversized": 413, "wrong_type": 415,
            "json_body": 415, "no_token": 401}
INVALID_KINDS = ["corrupt", "oversized", "wrong_type", "json_body", "no_token"]


@dataclass
class Result:
    index: int
    kind: str
    image: int
    status: int  # 0: no response (connection error or timeout)
    seconds: float
    label: str | None = None
    error: str = ""


# ---------------------------------------------------------------- a run and images to send


def stripes(root: Path, per_class: int = 20, size: int = 48, seed: int = 0) -> Path:
    """Three learnable classes of striped PNGs (as the test suite's fixture)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for name, pattern in (("horizontal", yy), ("vertical", xx), ("diagonal", xx + yy)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            period = int(rng.integers(4, 8))
            on = (pattern // (period // 2)) % 2 == 1
            img = np.where(on[..., None], rng.integers(0, 256, 3), rng.integers(0, 256, 3))
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{name}_{i:03d}.png")
    return root


def tiny_run(work: Path) -> Path:
    from medscope.api import train
    from medscope.config import load_config

    data = stripes(work / "data")
    config = load_config(overrides={"data.path": str(data), "out": str(work / "run"),
                                    "data.img_size": 32, "model.name": "simple_cnn",
                                    "train.epochs": 3, "train.batch_size": 16,
                                    "train.lr": 1e-3, "train.device": "cpu"})
    return train(config, progress=False).root


def image_pool(run: Path, work: Path, n: int = 24) -> list[Path]:
    """Valid images to send: the run's own data when it is a folder of PNG/JPEG, else new
    stripes. PNG only, so that file and upload decode identically."""
    candidates: list[Path] = []
    config_path = run / "config.yaml"
    if config_path.is_file():
        from medscope.config import load_config

        data = load_config(config_path).data.path
        if data is not None and Path(data).is_dir():
            candidates = sorted(Path(data).rglob("*.png"))
    if len(candidates) < n:
        candidates = sorted(stripes(work / "pool", per_class=n // 3 + 1, seed=1).rglob("*.png"))
    step = max(1, len(candidates) // n)
    return candidates[::step][:n]


def offline_labels(run: Path, images: list[Path]) -> list[str]:
    from medscope.predict import predict_files

    rows = predict_files(run, images, progress=False, batch_size=1)
    return [r["prediction"] for r in rows]


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run: Path, port: int, token: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("MEDSCOPE_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "medscope", "serve", str(run), "--host", "127.0.0.1",
         "--port", str(port), "--token", token, "--max-upload-mb", str(MAX_UPLOAD_MB)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (Linux /proc; psutil elsewhere)."""
    status = Path(f"/proc/{pid}/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    import psutil  # pragma: no cover - not Linux

    return psutil.Process(pid).memory_info().rss


# ---------------------------------------------------------------- the clients


def plan(n: int, n_images: int, seed: int) -> list[tuple[str, int]]:
    """(kind, image index) per request: 80 % valid, 20 % the invalid kinds in turn; shuffled."""
    rnd = random.Random(seed)
    n_invalid = round(n * 0.2)
    kinds = ["valid"] * (n - n_invalid) + [INVALID_KINDS[i % len(INVALID_KINDS)]
                                            for i in range(n_invalid)]
    rnd.shuffle(kinds)
    return [(kind, rnd.randrange(n_images)) for kind in kinds]


def send(client: httpx.Client, url: str, token: str, kind: str, image: bytes,
         garbage: bytes, big: bytes, heatmap: bool) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"}
    endpoint = f"{url}/api/predict"
    params = {"heatmap": str(heatmap).lower()}
    if kind == "valid":
        return client.post(endpoint, headers=auth, params=params,
                           files={"file": ("x.png", image, "image/png")})
    if kind == "corrupt":
        return client.post(endpoint, headers=auth, params=params,
                           files={"file": ("x.png", garbage, "image/png")})
    if kind == "oversized":
        return client.post(endpoint, headers=auth, params=params,
                           files={"file": ("x.png", big, "image/png")})
    if kind == "wrong_type":
        return client.post(endpoint, headers=auth, params=params,
                           files={"file": ("x.txt", b"not an image", "text/plain")})
    if kind == "json_body":
        return client.post(endpoint, headers=auth, params=params, json={"file": "x"})
    return client.post(endpoint, params=params, files={"file": ("x.png", image, "image/png")})


def run_load(url: str, token: str, server: subprocess.Popen, requests: list[tuple[str, int]],
             images: list[bytes], clients: int, max_seconds: float, heatmap: bool
             ) -> tuple[list[Result], float, dict[str, int]]:
    """Every planned request, sent by ``clients`` threads in order of the plan; returns the
    results, the wall time and the server's RSS at the window marks."""
    rng = np.random.default_rng(7)
    garbage = rng.bytes(4096)
    big = rng.bytes(int(MAX_UPLOAD_MB * 2**20 * 1.5))
    results: list[Result | None] = [None] * len(requests)
    lock, next_index, done = threading.Lock(), [0], [0]
    window = min(RSS_WINDOW, max(1, len(requests) // 4))
    rss: dict[str, int] = {"start": rss_bytes(server.pid)}
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                with lock:
                    i = next_index[0]
                    if i >= len(requests):
                        return
                    next_index[0] += 1
                kind, img = requests[i]
                start = time.perf_counter()
                try:
                    r = send(client, url, token, kind, images[img], garbage, big, heatmap)
                    label = r.json().get("label") if r.status_code == 200 else None
                    results[i] = Result(i, kind, img, r.status_code,
                                        time.perf_counter() - start, label)
                except (httpx.HTTPError, ValueError) as exc:
                    results[i] = Result(i, kind, img, 0, time.perf_counter() - start,
                                        error=f"{type(exc).__name__}: {exc}")
                with lock:
                    done[0] += 1
                    if done[0] == window:
                        rss["first_window"] = rss_bytes(server.pid)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    rss["end"] = rss_bytes(server.pid) if server.poll() is None else 0
    return [r for r in results if r is not None], wall, rss


# ---------------------------------------------------------------- report


def report(results: list[Result], planned: int, wall: float, rss: dict[str, int],
           expected_labels: list[str], alive: bool, args) -> tuple[list[str], bool]:
    latencies = np.array([r.seconds for r in results if r.status]) * 1000
    statuses = Counter(r.status for r in results)
    wrong_status = [r for r in results if r.status != EXPECTED[r.kind]]
    valid = [r for r in results if r.kind == "valid" and r.status == 200]
    wrong_label = [r for r in valid if r.label != expected_labels[r.image]]
    growth = (rss["end"] - rss["first_window"]) / rss["first_window"] \
        if rss.get("first_window") and rss.get("end") else float("nan")
    window = min(RSS_WINDOW, max(1, planned // 4))
    checks = {
        "all requests answered within --max-seconds": len(results) == planned,
        "0 responses 5xx": not any(500 <= r.status < 600 for r in results),
        "0 connection errors": statuses.get(0, 0) == 0,
        "server alive at the end": alive,
        "every invalid request got its 4xx": not [r for r in wrong_status if r.kind != "valid"],
        "every valid request answered 200": not [r for r in wrong_status if r.kind == "valid"],
        "every valid label equals offline predict": not wrong_label,
        f"RSS growth < 10 % (after {window} -> after {len(results)} requests)": growth < 0.10,
    }
    pct = (lambda q: f"{np.percentile(latencies, q):.1f}") if len(latencies) else (lambda q: "-")
    by_kind = Counter((r.kind, r.status) for r in results)
    lines = [
        f"medscope serve under load: {planned} requests, {args.clients} concurrent clients, "
        f"heatmap {'on' if args.heatmap else 'off'}, run {args.run or '(tiny, trained here)'}",
        f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}",
        f"sent {len(results)} in {wall:.1f} s: {len(results) / wall:.1f} requests/s",
        f"latency ms: p50 {pct(50)}  p95 {pct(95)}  p99 {pct(99)}  "
        f"max {latencies.max() if len(latencies) else float('nan'):.1f}",
        "status codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
        "by kind: " + ", ".join(f"{k} {s}: {v}" for (k, s), v in sorted(by_kind.items())),
        f"server RSS MB: start {rss['start'] / 2**20:.0f}, after {window} requests "
        f"{rss.get('first_window', 0) / 2**20:.0f}, end {rss.get('end', 0) / 2**20:.0f} "
        f"(growth {growth * 100:+.1f} %)",
        *[f"[{'ok' if ok else 'FAIL'}] {name}" for name, ok in checks.items()],
    ]
    for r in (wrong_status + wrong_label)[:10]:
        lines.append(f"  request {r.index} ({r.kind}): status {r.status}, label {r.label!r} "
                     f"vs {expected_labels[r.image]!r} {r.error}")
    return lines, all(checks.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="run dir (default: train one)")
    parser.add_argument("--requests", type=positive_int, default=1000)
    parser.add_argument("--clients", type=positive_int, default=8)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--heatmap", action="store_true", help="ask for Grad-CAM too")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.clients < 1:
        parser.error("--requests and --clients must be at least 1")
    with tempfile.TemporaryDirectory(prefix="medscope-serve-load-") as tmp:
        work = Path(tmp)
        run = args.run or tiny_run(work)
        pool = image_pool(run, work)
        expected = offline_labels(run, pool)
        images = [p.read_bytes() for p in pool]
        token, port = secrets.token_urlsafe(16), free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(run, port, token, work / "server.log")
        try:
            wait_ready(url, server)
            requests = plan(args.requests, len(images), args.seed)
            results, wall, rss = run_load(url, token, server, requests, images, args.clients,
                                          args.max_seconds, args.heatmap)
            alive = server.poll() is None
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        lines, ok = report(results, len(requests), wall, rss, expected, alive, args)
        if not alive:
            lines.append("server log tail:\n" + (work / "server.log").read_text()[-2000:])
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
