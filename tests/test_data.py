"""Loaders and input validation: every bad input is a one-line BcsubError naming the fix."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE_TRAIN
from train.data import load_dataset, save_npz, stratified_split, stratified_subsample
from train.errors import BcsubError


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def _labels(n: int) -> np.ndarray:
    return np.arange(n) % 8


def test_an2dl_format_labels_n_by_1(tmp_path):
    path = tmp_path / "training_set.npz"
    np.savez(path, images=_images(16), labels=_labels(16).reshape(-1, 1).astype(np.uint8))
    data = load_dataset(path)
    assert data.labels.shape == (16,) and data.labels.dtype == np.int64
    assert data.images.dtype == np.uint8 and data.images.shape == (16, 96, 96, 3)


def test_pbc96_sample_loads():
    data = load_dataset(SAMPLE_TRAIN)
    assert len(data) == 320 and data.class_counts().tolist() == [40] * 8


def test_class_folder_tree(tmp_path):
    images = _images(8)
    for i, name in enumerate(["basophil", "1", "erythroblast", "ig", "4", "monocyte", "6", "platelet"]):
        (tmp_path / name).mkdir()
        Image.fromarray(images[i]).save(tmp_path / name / f"{i}.png")
    Image.fromarray(np.zeros((120, 110, 3), np.uint8)).save(tmp_path / "platelet" / "big.jpg")
    (tmp_path / "platelet" / "notes.txt").write_text("ignored")
    data = load_dataset(tmp_path)
    assert len(data) == 9 and sorted(set(data.labels.tolist())) == list(range(8))
    assert np.array_equal(data.images[data.labels == 0][0], images[0])


def test_save_npz_round_trip(tmp_path):
    path = save_npz(tmp_path / "x.npz", _images(8), _labels(8))
    assert load_dataset(path).labels.tolist() == list(range(8))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(images=_images(8)[:, :64], labels=_labels(8)), "shape"),
        (dict(images=_images(8).astype(str), labels=_labels(8)), "dtype"),
        (dict(images=_images(8).astype(np.float32) * 2, labels=_labels(8)), "0..255"),
        (dict(images=_images(8), labels=_labels(8) + 3), "outside 0..7"),
        (dict(images=_images(8), labels=np.zeros(8, int)), "no images of class"),
        (dict(images=_images(8), labels=_labels(7)), "labels have shape"),
        (dict(pictures=_images(8), labels=_labels(8)), "expected 'images' and 'labels'"),
    ],
)
def test_bad_npz_is_a_clear_error(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(BcsubError, match=message):
        load_dataset(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(BcsubError, match="no such file"):
        load_dataset(tmp_path / "nope.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(BcsubError, match="not a readable npz"):
        load_dataset(corrupt)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, images=np.array([object()], dtype=object), labels=_labels(1))
    with pytest.raises(BcsubError):
        load_dataset(pickled)


def test_stratified_subsample_and_split():
    data = load_dataset(SAMPLE_TRAIN)
    small = stratified_subsample(data, 80, seed=1)
    assert len(small) == 80 and small.class_counts().tolist() == [10] * 8
    train, val = stratified_split(data, 0.25, seed=1)
    assert val.class_counts().tolist() == [10] * 8 and train.class_counts().tolist() == [30] * 8
    assert len(train) + len(val) == len(data)
    assert not {x.tobytes() for x in train.images} & {x.tobytes() for x in val.images}
