import base64
import io
import json
import tempfile

import numpy as np
import pytest
from PIL import Image

from medscope.data.io import read_image
from medscope.errors import MedscopeError
from medscope.serve import create_app, load_models
from tests.data.test_io_bytes import png_bomb


@pytest.fixture(scope="module")
def sample(image_folder):
    return sorted((image_folder / "beta").glob("*.png"))[0]


def _post(client, data: bytes, ctype="image/png", name="x.png", **params):
    return client.post("/api/predict", params=params, files={"file": (name, data, ctype)})


def test_health_page_and_static_files(make_client):
    client = make_client()
    assert client.get("/healthz").json() == {"status": "ok", "models": 1}
    page = client.get("/")
    assert page.status_code == 200 and "not a validated diagnostic device" in page.text
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "app.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_model_info_reports_metrics_and_which_refer_rule_applies(make_client, trained_run):
    client = make_client()
    listing = client.get("/api/models").json()
    run_id = trained_run.root.name
    assert listing["default"] == run_id and [m["id"] for m in listing["models"]] == [run_id]
    info = client.get("/api/model", params={"model": run_id}).json()
    metrics = json.loads(trained_run.metrics.read_text())
    assert info["classes"] == ["alpha", "beta", "gamma"] and info["img_size"] == 32
    assert info["metrics"]["accuracy"] == metrics["accuracy"]
    assert info["metrics"]["f1_macro"] == metrics["f1_macro"]
    ckpt = json.loads(trained_run.best.with_suffix(".json").read_text())
    stored = ckpt.get("selective_threshold")
    if stored is None:  # fitted on validation but unreachable: no referral, as in predict
        assert info["refer_below"] is None and info["refer_rule"].startswith("off")
    else:
        assert info["refer_below"] == stored and "selective_threshold" in info["refer_rule"]
    assert info["temperature"] == ckpt["temperature"]


def test_predict_matches_the_predictor_on_the_same_image(make_client, served, sample):
    body = _post(make_client(), sample.read_bytes()).json()
    served_model = next(iter(served.values()))
    predictor = served_model.predictor
    expected = predictor.probs_from_pixels(read_image(sample, 32, 3)[None])[0]
    got = np.array([body["probabilities"][c] for c in predictor.classes])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert body["label"] == predictor.classes[int(expected.argmax())]
    assert body["confidence"] == pytest.approx(float(expected.max()))
    stored = predictor.meta.get("selective_threshold")
    # The checkpoint's validated threshold, else none (null), as predict and evaluate decide.
    assert body["refer_to_expert"] == (None if stored is None else bool(expected.max() < stored))
    assert body["refer_below"] == stored
    assert body["model"]["id"] == served_model.id
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
    assert heat.format == "PNG" and heat.size == (32, 32)


@pytest.mark.parametrize(("threshold", "refer", "below"),
                         [(1.0, True, 1.0), (1e-9, False, 1e-9), (0.0, None, None)])
def test_abstain_below_decides_refer_to_expert(trained_run, sample, threshold, refer, below):
    """0 switches referral off (null), as ``predict --abstain-below 0`` leaves the column empty."""
    from fastapi.testclient import TestClient

    client = TestClient(create_app(load_models([trained_run.root], abstain_below=threshold)))
    body = _post(client, sample.read_bytes(), heatmap="false").json()
    assert body["refer_to_expert"] is refer and body["refer_below"] == below
    assert "--abstain-below" in client.get("/api/model").json()["refer_rule"]


def test_corrupt_random_and_bomb_uploads_are_400(make_client, sample):
    client = make_client()
    for data in (sample.read_bytes()[:60], np.random.default_rng(0).bytes(4000), png_bomb(),
                 b""):
        r = _post(client, data)
        assert r.status_code == 400, data[:20]
        assert "not a usable image" in r.json()["error"]
    assert "decompression bomb" in _post(client, png_bomb()).json()["error"]


def test_too_large_is_413_before_and_after_parsing(make_client):
    client = make_client(max_upload_mb=0.01)  # 10 KiB
    big, medium = bytes(200 * 1024), bytes(30 * 1024)
    for data in (big, medium):  # refused from Content-Length, then from the parsed part
        r = _post(client, data)
        assert r.status_code == 413 and "0.01 MB" in r.json()["error"]
    # Without a Content-Length (chunked), the running count refuses it.
    chunked = client.post("/api/predict", content=iter([big[:100_000], big[100_000:]]),
                          headers={"content-type": "multipart/form-data; boundary=x"})
    assert chunked.status_code == 413


def test_wrong_content_types_are_415(make_client, sample):
    client = make_client()
    r = client.post("/api/predict", json={"file": "x"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
    r = _post(client, sample.read_bytes(), ctype="text/plain")
    assert r.status_code == 415 and "text/plain" in r.json()["error"]


def test_form_without_file_is_400(make_client):
    r = make_client().post("/api/predict", data={"other": "1"},
                           files={"note": ("n.txt", b"x", "image/png")})
    assert r.status_code == 400 and "'file'" in r.json()["error"]


def test_token_missing_or_wrong_is_401_and_right_is_200(make_client, sample):
    client = make_client(token="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        for r in (client.get("/api/models", headers=headers),
                  client.post("/api/predict", headers=headers,
                              files={"file": ("x.png", sample.read_bytes(), "image/png")})):
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "token" in r.json()["error"]
    ok = {"Authorization": "Bearer s3cret"}
    assert client.get("/api/models", headers=ok).status_code == 200
    r = client.post("/api/predict", headers=ok, params={"heatmap": "false"},
                    files={"file": ("x.png", sample.read_bytes(), "image/png")})
    assert r.status_code == 200
    assert client.get("/healthz").status_code == 200  # probes need no token
    assert client.get("/api/config").json()["token_required"] is True


def test_unknown_model_is_404(make_client, sample):
    client = make_client()
    r = client.get("/api/model", params={"model": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    assert _post(client, sample.read_bytes(), model="nope").status_code == 404


def test_several_runs_get_distinct_ids(trained_run):
    from fastapi.testclient import TestClient

    models = load_models([trained_run.root, trained_run.root])
    name = trained_run.root.name
    assert list(models) == [name, f"{name}-2"]
    ids = [m["id"] for m in TestClient(create_app(models)).get("/api/models").json()["models"]]
    assert ids == [name, f"{name}-2"]


def test_bad_run_directory_is_a_user_error(tmp_path):
    with pytest.raises(MedscopeError, match="run directory not found"):
        load_models([tmp_path / "missing"])
    with pytest.raises(MedscopeError, match="abstain-below"):
        load_models([tmp_path], abstain_below=1.5)


def test_cors_is_off_unless_origins_are_given(served, make_client):
    from fastapi.testclient import TestClient

    origin = {"Origin": "http://elsewhere.example"}
    assert "access-control-allow-origin" not in make_client().get("/api/models",
                                                                   headers=origin).headers
    open_client = TestClient(create_app(served, cors_origins=["http://elsewhere.example"]))
    allowed = open_client.get("/api/models", headers=origin).headers
    assert allowed["access-control-allow-origin"] == "http://elsewhere.example"


def test_large_upload_stays_in_memory(make_client, monkeypatch):
    """A 2 MB upload (past Starlette's 1 MB spool) must never roll over to a temporary file."""
    def refuse(self):
        raise AssertionError("upload spooled to disk")

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", refuse)
    noise = np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG", compress_level=0)
    assert len(buf.getvalue()) > 2 * 2**20
    # tiles=off: the whole-image answer (a 900 px image is tiled by default, and noise has
    # no usable tile to call).
    r = _post(make_client(), buf.getvalue(), heatmap="false", tiles="off")
    assert r.status_code == 200 and r.json()["label"] in ("alpha", "beta", "gamma")


def test_served_model_takes_its_rules_from_decisions(served):
    """Serve keeps no rule of its own: what it reports is ``decisions.rules_for``'s."""
    from medscope.evaluate.decisions import rules_for

    model = next(iter(served.values()))
    assert model.rules == rules_for([model.predictor.meta])
    assert (model.refer_below, model.refer_rule) == (model.rules.refer.threshold,
                                                     model.rules.refer.source)
