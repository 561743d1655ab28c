from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from medscope.data.io import read_image
from medscope.serve.app import gradcam_available


def test_concurrent_requests_match_sequential_and_the_predictor(live_url, served, image_folder):
    """Twelve requests from six threads on a real socket: each answer belongs to its own image."""
    images = [sorted((image_folder / c).glob("*.png"))[1] for c in ("alpha", "beta", "gamma")]
    predictor = next(iter(served.values())).predictor

    def probs(path) -> np.ndarray:
        with httpx.Client(base_url=live_url, timeout=60, trust_env=False) as client:
            r = client.post("/api/predict", files={"file": ("x.png", path.read_bytes(),
                                                            "image/png")})
        r.raise_for_status()
        body = r.json()
        assert ("heatmap_png_base64" in body) == gradcam_available()
        return np.array([body["probabilities"][c] for c in predictor.classes])

    sequential = [probs(p) for p in images]
    order = images * 4
    with ThreadPoolExecutor(6) as pool:
        concurrent = list(pool.map(probs, order))
    for path, got in zip(order, concurrent, strict=True):
        i = images.index(path)
        np.testing.assert_array_equal(got, sequential[i])
        direct = predictor.probs_from_pixels(read_image(path, 32, 3)[None])[0]
        np.testing.assert_allclose(got, direct, rtol=0, atol=1e-6)
    # The three images are told apart, so a mix-up between requests could not go unseen.
    assert len({tuple(np.round(s, 6)) for s in sequential}) == 3
