"""The server's security rules of #14: the bearer token is compared in constant time, upload
size limits apply before any decoding, CORS is off by default."""

from __future__ import annotations


def test_bearer_token_is_compared_in_constant_time(make_client, monkeypatch):
    import hmac

    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    client = make_client(token="s3cret")
    assert client.get("/api/models", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert client.get("/api/models",
                      headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert seen == [(b"guess", b"s3cret"), (b"s3cret", b"s3cret")]


def test_size_limit_applies_before_any_decoding(make_client, monkeypatch):
    import medscope.serve.app as app

    decoded = []
    monkeypatch.setattr(app, "read_image_bytes", lambda *a: decoded.append(a) or None)
    client = make_client(max_upload_mb=0.01)
    r = client.post("/api/predict", files={"file": ("x.png", bytes(30 * 1024), "image/png")})
    assert r.status_code == 413 and not decoded


def test_cors_is_off_by_default(make_client):
    r = make_client().options("/api/predict", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
