import pytest

from medscope.data.cache import decode_images
from medscope.data.sources import scan_folder
from medscope.errors import MedscopeError
from tests.conftest import make_image_folder


def _with_bad_file(tmp_path, per_class=10):
    root = make_image_folder(tmp_path / "d", per_class=per_class, size=24)
    bad = root / "beta" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root, bad


def test_bad_file_is_skipped_and_listed(tmp_path):
    root, bad = _with_bad_file(tmp_path)
    samples = scan_folder(root).samples
    out = decode_images(samples, 16, 3, progress=False)
    assert out.pixels.shape == (30, 16, 16, 3)
    assert [p for p, _ in out.bad] == [bad]
    assert bad not in {samples[i].path for i in out.kept}


def test_strict_stops_at_the_bad_file(tmp_path):
    root, bad = _with_bad_file(tmp_path)
    with pytest.raises(MedscopeError, match="broken.png"):
        decode_images(scan_folder(root).samples, 16, 3, strict=True, progress=False)


def test_too_many_bad_files_stop_the_run(tmp_path):
    root, _ = _with_bad_file(tmp_path, per_class=3)  # 1 bad of 10 = 10% > 5%
    with pytest.raises(MedscopeError, match="1 of 10 images are unreadable"):
        decode_images(scan_folder(root).samples, 16, 3, max_bad_fraction=0.05, progress=False)
