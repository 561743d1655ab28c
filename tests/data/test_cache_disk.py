"""The memory-mapped disk cache: reused across runs, only changed files re-decoded."""

import json
import os

import numpy as np
from PIL import Image

import medscope.data.cache as cache_mod
from medscope.data.cache import decode_images, default_cache_dir
from medscope.data.sources import scan_folder
from tests.conftest import make_image_folder


def _count_decodes(monkeypatch):
    calls = []
    real = cache_mod.read_sample

    def counting(sample, size, in_chans):
        calls.append(sample.path.name)
        return real(sample, size, in_chans)

    monkeypatch.setattr(cache_mod, "read_sample", counting)
    return calls


def test_second_decode_reads_the_memmap(tmp_path, monkeypatch):
    samples = scan_folder(make_image_folder(tmp_path / "d", per_class=3, size=24)).samples
    calls = _count_decodes(monkeypatch)
    first = decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    assert len(calls) == 9 and first.cache_file.is_file()
    again = decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    assert len(calls) == 9  # nothing decoded again
    assert isinstance(again.pixels, np.memmap)
    assert np.array_equal(np.asarray(again.pixels), np.asarray(first.pixels))
    plain = decode_images(samples, 16, 3, progress=False)
    assert np.array_equal(plain.pixels, np.asarray(again.pixels))


def test_changed_file_alone_is_decoded_again(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "d", per_class=3, size=24)
    samples = scan_folder(root).samples
    decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    target = samples[4].path
    Image.fromarray(np.full((24, 24, 3), 7, np.uint8)).save(target)
    os.utime(target, ns=(1, 1))  # a distinct mtime even on coarse file systems
    calls = _count_decodes(monkeypatch)
    out = decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    assert calls == [target.name]
    assert (np.asarray(out.pixels[4]) == 7).all()


def test_new_mtime_with_the_same_bytes_is_not_decoded_again(tmp_path, monkeypatch):
    # A re-mounted share or a copy without -p gives every file a new mtime.
    samples = scan_folder(make_image_folder(tmp_path / "d", per_class=3, size=24)).samples
    first = decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    before = np.asarray(first.pixels).copy()
    for s in samples:
        os.utime(s.path, ns=(1, 1))
    calls = _count_decodes(monkeypatch)
    out = decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    assert calls == []
    assert np.array_equal(np.asarray(out.pixels), before)
    meta = json.loads(out.cache_file.with_suffix(".json").read_text())
    assert meta["stamps"][0][1] == 1  # the new stamps are recorded


def test_cache_without_byte_hashes_decodes_restamped_files_once(tmp_path, monkeypatch):
    samples = scan_folder(make_image_folder(tmp_path / "d", per_class=2, size=24)).samples
    first = decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    meta_path = first.cache_file.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    del meta["digests"]  # as written by an earlier medscope
    meta_path.write_text(json.dumps(meta))
    os.utime(samples[1].path, ns=(1, 1))
    calls = _count_decodes(monkeypatch)
    decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    assert calls == [samples[1].path.name]
    os.utime(samples[1].path, ns=(2, 2))
    decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    assert calls == [samples[1].path.name]  # its hash is known now


def test_other_size_or_channels_is_another_cache_entry(tmp_path):
    samples = scan_folder(make_image_folder(tmp_path / "d", per_class=2, size=24)).samples
    a = decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    b = decode_images(samples, 8, 3, progress=False, cache_dir=tmp_path / "c")
    c = decode_images(samples, 16, 1, progress=False, cache_dir=tmp_path / "c")
    assert len({a.cache_file, b.cache_file, c.cache_file}) == 3


def test_bad_files_are_remembered_by_the_cache(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "d", per_class=4, size=24)
    (root / "beta" / "bad.png").write_bytes(b"not a png")
    samples = scan_folder(root).samples
    decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    calls = _count_decodes(monkeypatch)
    out = decode_images(samples, 16, 3, progress=False, cache_dir=tmp_path / "c")
    assert calls == [] and [p.name for p, _ in out.bad] == ["bad.png"]
    assert out.pixels.shape[0] == 12


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSCOPE_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("MEDSCOPE_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "medscope")
