"""Duplicates, label conflicts and outliers: detection, the cleaning plan, and the written report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tools.inspect_report import write_clean_npz, write_inspection
from train.cleaning import (
    CleaningPlan,
    InspectionResult,
    inspect_arrays,
    perceptual_hashes,
    plan_cleaning,
)
from train.errors import BcsubError
from train.synthetic import make_an2dl_like

ROOT = Path(__file__).resolve().parents[1]
REAL_SOURCES = (
    (ROOT / "data/sample/sample.npz",),
    (ROOT / "data/sample/train.npz", ROOT / "data/sample/test.npz"),
    (ROOT.parent / "shared/data/pbc96_val.npz",),
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_cells(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cell-like images: a stained elliptic cell (size by class) among pale red discs on pink."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 8
    yy, xx = np.mgrid[:96, :96].astype(np.float32)

    def disc(cy: np.ndarray, cx: np.ndarray, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
        return ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2 + (
            (xx - cx[:, None, None]) / rx[:, None, None]) ** 2 < 1

    img = np.array([225, 190, 205], np.float32) + rng.normal(0, 8, (n, 1, 1, 3))
    for _ in range(4):  # red blood cells in the background
        rbc = disc(*rng.uniform(0, 96, (2, n)), *np.repeat(rng.uniform(10, 18, (1, n)), 2, 0))
        img = np.where(rbc[..., None], img * np.array([0.92, 0.8, 0.85], np.float32), img)
    size = 10 + 2.5 * labels
    cell = disc(*rng.normal(48, 6, (2, n)), size * rng.uniform(0.75, 1.25, n),
                size * rng.uniform(0.75, 1.25, n))
    stain = np.array([120, 70, 165], np.float32) + rng.normal(0, 10, (n, 1, 1, 3))
    img = np.where(cell[..., None], stain, img) + rng.normal(0, 6, (n, 96, 96, 3))
    return np.clip(img, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def _load_real() -> tuple[np.ndarray, np.ndarray] | None:
    for files in REAL_SOURCES:
        if all(f.exists() for f in files):
            parts = [np.load(f, allow_pickle=False) for f in files]
            return (np.concatenate([p["images"] for p in parts]),
                    np.concatenate([p["labels"].reshape(-1) for p in parts]))
    return None


class Case:
    """An AN2DL-like set with known truth, inspected and planned once."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels, self.truth = make_an2dl_like(images, labels, copies=(160, 20), seed=0)
        self.result = inspect_arrays(self.images, self.labels)
        self.plan = plan_cleaning(self.result, self.labels, len(self.labels))
        self.reasons = {d["index"]: d["reason"] for d in self.plan.removed}


@pytest.fixture(scope="module", params=["real", "synthetic"])
def case(request: pytest.FixtureRequest) -> Case:
    if request.param == "synthetic":
        return Case(*fake_cells(320))
    real = _load_real()
    if real is None:
        pytest.skip("no real cells: data/sample/{sample,train}.npz and ../shared/data/pbc96_val.npz missing")
    return Case(*real)


def test_fixture_looks_like_an2dl(case: Case) -> None:
    labels, truth = case.labels, case.truth
    assert labels.shape == (len(case.images), 1) and labels.dtype == np.uint8
    for group in truth["outlier_groups"]:
        assert np.all(case.images[group] == case.images[group[0]])  # pixel-identical copies
    assert sorted(set(labels[truth["outlier_groups"][0], 0])) == list(range(8))
    buckets = [truth[k] for k in ("outlier_indices", "duplicate_copy_indices", "conflict_indices",
                                  "genuine_indices")]
    assert sum(map(len, buckets)) == len(labels) == len(set().union(*map(set, buckets)))


def test_every_copy_is_an_outlier(case: Case) -> None:
    assert set(case.truth["outlier_indices"]) <= set(case.result.outlier_indices)
    assert all(case.reasons[i] == "outlier" for i in case.truth["outlier_indices"])
    assert all(case.result.outlier_scores[i] >= 2 for i in case.truth["outlier_indices"])


def test_exact_duplicates_found_and_one_copy_kept(case: Case) -> None:
    exact = {tuple(g) for g in case.result.exact_groups}
    for first, later in case.truth["duplicate_groups"]:
        assert (first, later) in exact
        assert case.plan.keep[first] and case.reasons[later] == "duplicate_copy"


def test_conflicting_pair_dropped_entirely(case: Case) -> None:
    pair = case.truth["conflict_indices"]
    assert pair in case.result.conflict_groups
    assert all(case.reasons[i] == "label_conflict" for i in pair)


def test_few_genuine_cells_removed(case: Case) -> None:
    genuine = np.array(case.truth["genuine_indices"])
    lost = int((~case.plan.keep[genuine]).sum())
    assert lost <= 0.01 * len(genuine), f"{lost} of {len(genuine)} genuine cells removed"


def test_plan_keeps_one_copy_of_each_agreeing_group(case: Case) -> None:
    outliers = set(case.result.outlier_indices)
    for group in case.result.exact_groups + case.result.near_groups:
        if len(set(case.labels[group, 0])) == 1 and not outliers & set(group):
            assert case.plan.keep[group].sum() == 1


def test_report_json_and_pngs(case: Case, tmp_path: Path) -> None:
    path = write_inspection(case.result, case.images, case.labels, tmp_path)
    report = json.loads(path.read_text())
    for key in ("n_images", "class_counts", "imbalance_ratio", "exact_groups", "near_groups",
                "conflict_groups", "outliers", "class_names", "summary", "figures"):
        assert key in report
    assert report["n_images"] == len(case.labels)
    assert sum(report["class_counts"].values()) == len(case.labels)
    for group in report["exact_groups"] + report["near_groups"] + report["conflict_groups"]:
        assert len(group) >= 2 and all(set(m) == {"index", "label"} for m in group)
    assert {"index", "label", "score", "by"} == set(report["outliers"][0])
    scores = [o["score"] for o in report["outliers"]]
    assert scores == sorted(scores, reverse=True)
    figures = report["figures"]
    assert figures["groups_shown"] == len(figures["groups"]) == min(figures["groups_total"], 20)
    for name in [*figures["groups"], figures["outliers"], figures["embedding"]]:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob("*.tmp"))


def test_write_clean_npz(case: Case, tmp_path: Path) -> None:
    out, manifest = write_clean_npz(case.images, case.labels, case.plan, tmp_path / "clean.npz",
                                    tmp_path / "removed.json")
    with np.load(out, allow_pickle=False) as data:
        assert data["labels"].shape == (int(case.plan.keep.sum()),)
        assert np.array_equal(data["images"], case.images[case.plan.keep])
    removed = json.loads(manifest.read_text())["removed"]
    assert [r["index"] for r in removed] == np.flatnonzero(~case.plan.keep).tolist()
    assert {r["reason"] for r in removed} == {"outlier", "duplicate_copy", "label_conflict"}


# ----------------------------------------------------------------- small, purely synthetic units


def test_near_duplicates_grouped_and_conflicts_dropped() -> None:
    images, labels = fake_cells(48, seed=3)
    shifted = np.clip(images[0].astype(int) + 3, 0, 255).astype(np.uint8)  # brightness tweak
    images = np.concatenate([images, shifted[None], images[5][None], images[7][None]])
    labels = np.concatenate([labels, [labels[0], labels[5], (labels[7] + 1) % 8]]).astype(np.uint8)
    result = inspect_arrays(images, labels)
    assert [0, 48] in result.near_groups
    assert [5, 49] in result.exact_groups and [7, 50] in result.exact_groups
    assert [7, 50] in result.conflict_groups and [5, 49] not in result.conflict_groups
    assert not any(set(g) == {5, 49} for g in result.near_groups)  # exact pairs are not "near"
    plan = plan_cleaning(result, labels, len(labels))
    assert plan.keep[[0, 5]].all() and not plan.keep[[48, 49, 7, 50]].any()


def test_perceptual_hash_is_stable_under_small_changes() -> None:
    images, _ = fake_cells(16, seed=4)
    noisy = np.clip(images + np.random.default_rng(0).integers(-2, 3, images.shape), 0, 255)
    a, b = perceptual_hashes(images), perceptual_hashes(noisy.astype(np.uint8))
    assert np.all(np.bitwise_count(a ^ b) <= 4)
    assert len(set(a.tolist())) == len(a)


def test_plan_rules_on_a_hand_made_result() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2, 3, 4])
    result = InspectionResult(
        class_counts={}, imbalance_ratio=1.0,
        exact_groups=[[0, 1], [2, 3]], near_groups=[[4, 5]], conflict_groups=[[2, 3]],
        outlier_indices=[5, 7], outlier_scores=np.zeros(8),
    )
    plan = plan_cleaning(result, labels, 8)
    assert isinstance(plan, CleaningPlan)
    assert plan.keep.tolist() == [True, False, False, False, True, False, True, False]
    reasons = {d["index"]: (d["reason"], d["group"]) for d in plan.removed}
    assert reasons == {1: ("duplicate_copy", 0), 2: ("label_conflict", 1), 3: ("label_conflict", 1),
                       5: ("outlier", None), 7: ("outlier", None)}


def test_small_set_flags_only_copy_groups() -> None:
    images, labels = fake_cells(12, seed=5)
    images = np.concatenate([images, np.repeat(images[:1], 5, axis=0)])
    labels = np.concatenate([labels, np.arange(5) % 8]).astype(np.uint8)
    result = inspect_arrays(images, labels)
    assert result.outlier_indices == [0, 12, 13, 14, 15, 16]
    assert set(result.outlier_by.values()) == {"copies"}


def test_bad_input_raises_bcsub_error() -> None:
    images, labels = fake_cells(8)
    with pytest.raises(BcsubError, match="labels"):
        inspect_arrays(images, labels[:5])
    with pytest.raises(BcsubError, match="uint8"):
        inspect_arrays(images.astype(np.float32), labels)
    with pytest.raises(BcsubError, match="contamination"):
        inspect_arrays(images, labels, contamination=2.0)
