"""Pre-split folders, CSV (multi-class, multi-label both ways), MedMNIST npz, detection."""

import json

import numpy as np
import pytest
from PIL import Image

from medscope.data.cache import decode_images
from medscope.data.sources import detect_format, load_source
from medscope.errors import MedscopeError
from tests.conftest import make_image_folder


def _png(path, value=100, size=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def test_presplit_folder_keeps_given_splits(tmp_path):
    make_image_folder(tmp_path / "d" / "train", per_class=4, size=16)
    make_image_folder(tmp_path / "d" / "test", per_class=2, size=16)
    src = load_source(tmp_path / "d")
    assert src.kind == "presplit" and src.classes == ["alpha", "beta", "gamma"]
    assert list(src.given_splits()).count("test") == 6
    assert src.sample_id(src.samples[0]).startswith("test/alpha/")


def test_folder_with_a_class_named_test_is_not_presplit(tmp_path):
    make_image_folder(tmp_path / "d", classes=("train", "test"), per_class=3, size=16)
    src = load_source(tmp_path / "d")
    assert src.kind == "folder" and src.classes == ["test", "train"]


def test_presplit_unknown_class_in_test_is_an_error(tmp_path):
    make_image_folder(tmp_path / "d" / "train", per_class=2, size=16)
    make_image_folder(tmp_path / "d" / "val", classes=("alpha", "beta", "omega"), per_class=2,
                      size=16)
    with pytest.raises(MedscopeError, match="omega"):
        load_source(tmp_path / "d")


def test_csv_multiclass_with_split_and_group(tmp_path):
    for i in range(4):
        _png(tmp_path / "img" / f"{i}.png")
    (tmp_path / "l.csv").write_text("path,label,split,group\nimg/0.png,cat,train,p1\n"
                                    "img/1.png,dog,train,p1\nimg/2.png,cat,test,p2\n"
                                    "img/3.png,dog,validation,p3\n")
    src = load_source(tmp_path / "l.csv")
    assert src.classes == ["cat", "dog"] and not src.multilabel
    assert list(src.targets()) == [0, 1, 0, 1]
    assert list(src.given_splits()) == ["train", "train", "test", "val"]
    assert src.samples[0].group == "p1" and src.samples[0].path == tmp_path / "img" / "0.png"


def test_csv_pipe_separated_multilabel_and_no_finding(tmp_path):
    (tmp_path / "l.csv").write_text("Image Index,Finding Labels\na.png,Effusion|Mass\n"
                                    "b.png,No Finding\nc.png,Mass\n")
    src = load_source(tmp_path / "l.csv")
    assert src.multilabel and src.classes == ["Effusion", "Mass"]
    assert src.targets().tolist() == [[1, 1], [0, 0], [0, 1]]
    assert src.counts() == {"Effusion": 1, "Mass": 2}
    assert src.label_name(src.samples[0]) == "Effusion|Mass"


def test_csv_onehot_columns_multilabel(tmp_path):
    (tmp_path / "l.csv").write_text("path,A,B,C,group\na.png,1,0,1,x\nb.png,0,0,0,y\n")
    src = load_source(tmp_path / "l.csv")
    assert src.multilabel and src.classes == ["A", "B", "C"]
    assert src.targets().tolist() == [[1, 0, 1], [0, 0, 0]]


def test_csv_missing_label_column_is_an_error(tmp_path):
    (tmp_path / "l.csv").write_text("path,comment\na.png,hello\n")
    with pytest.raises(MedscopeError, match="l.csv: no label column"):
        load_source(tmp_path / "l.csv")


def test_csv_missing_file_becomes_a_bad_file_not_a_crash(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png")
    (tmp_path / "l.csv").write_text("path,label\n0.png,a\n1.png,b\n2.png,a\ngone.png,b\n")
    src = load_source(tmp_path / "l.csv")
    out = decode_images(src.samples, 8, 3, progress=False)
    assert [(p.name, r) for p, r in out.bad] == [("gone.png", "file not found")]
    assert out.pixels.shape[0] == 3


def _npz(path, labels, images):
    np.savez(path, train_images=images, train_labels=labels, test_images=images[:2],
             test_labels=labels[:2])
    return path


def test_npz_grayscale_multiclass_with_sidecar_names(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (6, 28, 28), dtype=np.uint8)
    path = _npz(tmp_path / "pneumonia.npz", np.array([[0], [1], [0], [1], [0], [1]]), images)
    (tmp_path / "pneumonia.json").write_text(json.dumps({"label": {"0": "normal",
                                                                    "1": "pneumonia"}}))
    src = load_source(path)
    assert src.kind == "npz" and src.classes == ["normal", "pneumonia"]
    assert len(src.samples) == 8 and list(src.given_splits()).count("test") == 2
    out = decode_images(src.samples, 16, 3, progress=False)
    assert out.pixels.shape == (8, 16, 16, 3)
    one = decode_images(src.samples[:1], 28, 1, progress=False).pixels[0, :, :, 0]
    assert np.array_equal(one, images[0])


def test_npz_multilabel_rgb_gets_generic_names(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    labels = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]])
    src = load_source(_npz(tmp_path / "chest.npz", labels, images))
    assert src.multilabel and src.classes == ["class_0", "class_1", "class_2"]
    assert src.targets()[:4].tolist() == labels.tolist()


def test_npz_without_expected_keys_is_an_error(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(MedscopeError, match="x.npz: npz lacks train_images, train_labels"):
        load_source(tmp_path / "x.npz")


@pytest.mark.parametrize("name, kind", [("a.csv", "csv"), ("a.npz", "npz"), ("d", "folder")])
def test_format_detection(tmp_path, name, kind):
    target = tmp_path / name
    target.mkdir() if kind == "folder" else target.write_text("")
    assert detect_format(target) == kind


def test_unknown_file_kind_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(MedscopeError, match="pass --format"):
        load_source(tmp_path / "a.txt")
