"""The seen-images record: `bcsub package` fingerprints the images its members trained and validated on (and the
TTA was chosen on); `bcsub local-score` says when it scores any of them. Real runs, zips and CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np

from tools.seen import Seen, fingerprints, seen_by, seen_warning
from train.runs import find_members
from train.splits import read_split


def test_fingerprints_tell_images_apart_and_not_their_dtype():
    images = np.random.default_rng(0).integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    prints = fingerprints(images)
    assert prints.dtype == np.dtype("<u8") and len(np.unique(prints)) == 6
    touched = images.copy()
    touched[2, 50, 50, 1] ^= 1  # one bit of one pixel
    assert (fingerprints(touched) == prints).tolist() == [True, True, False, True, True, True]
    assert np.array_equal(fingerprints(images.astype(np.float64)), prints)  # an integral float copy: the same image
    seen = Seen.of([prints[:2]], [prints[1:4]])  # an image both trained and validated on counts as trained on
    assert seen.count(images) == {"images": 6, "training": 2, "validation": 2}


def test_the_record_holds_the_members_split_and_the_tta_images(trained_run):
    members = find_members(trained_run)
    split = read_split(members[0].run_dir)
    data, val = split.data.load().images, split.val_file.load().images
    extra = np.random.default_rng(1).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    seen, note = seen_by(members, extra)
    assert note is None
    assert np.array_equal(seen.training, np.unique(fingerprints(data[split.train])))
    expected_val = np.setdiff1d(np.unique(np.concatenate([fingerprints(val[split.val]), fingerprints(extra)])),
                                seen.training)
    assert np.array_equal(seen.validation, expected_val) and len(seen.validation) == len(split.val) + 3


def test_a_gone_data_file_is_left_out_with_a_note(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    raw = json.loads((run / "split.json").read_text())
    raw["data"]["path"] = str(tmp_path / "moved.npz")
    (run / "split.json").write_text(json.dumps(raw))
    seen, note = seen_by(find_members(run), None)
    assert seen is None and "moved.npz" in note


def test_package_writes_the_record(packaged_zip, trained_run):
    """The zip holds what ``seen_by`` makes of its run (the TTA's images are the run's validation images); the
    local score of it is asserted in tests/test_end_to_end.py."""
    split = read_split(find_members(trained_run)[0].run_dir)
    seen = Seen.from_zip(packaged_zip[0])
    assert np.array_equal(seen.training, np.unique(fingerprints(split.data.load().images[split.train])))
    assert len(seen.validation) == len(split.val)


def test_the_warning_names_what_was_seen():
    assert seen_warning({"images": 80, "training": 0, "validation": 0}) is None
    assert seen_warning({"images": 1982, "training": 1, "validation": 0}) == (  # PBC96: one test image is a train one
        "1 of 1982 scored images are, pixel for pixel, images this zip trained on (duplicates across the data files): "
        "they can move the scores by at most 0.1%")
    assert "validation images" in seen_warning({"images": 80, "training": 0, "validation": 80})
    assert seen_warning({"images": 80, "training": 3, "validation": 1}).startswith(
        "3 of 80 scored images are images this zip trained on (and 1 more it was validated on)")
