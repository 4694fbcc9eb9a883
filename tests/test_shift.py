"""Tests for tools.shift: the deterministic shift suite of `bcsub local-score`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tools.shift.an2dl import AN2DL_STRENGTHS, an2dl_shift
from tools.shift.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from tools.shift.suite import SUITES, Variant, apply_variant, plan_variants
from train.errors import BcsubError

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "test.npz"
RANDOM = ("motion_blur", "stain_deposit", "bubble")  # the ones that draw random numbers


def _synthetic(n: int = 8, seed: int = 0) -> np.ndarray:
    """Smooth random RGB images with a dark round 'cell' and mild texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, 3))
    freq = rng.uniform(2, 6, (n, 1, 1, 3))
    base = rng.uniform(170, 215, (n, 1, 1, 3)) + 20 * np.sin(
        freq * (yy[None, ..., None] + 0.7 * xx[None, ..., None]) + phase
    )
    cy, cx = rng.uniform(0.35, 0.65, (2, n, 1, 1))
    cell = ((yy - cy) ** 2 + (xx - cx) ** 2 < 0.25**2)[..., None]
    img = np.where(cell, base * np.array([0.45, 0.3, 0.6]), base)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    if SAMPLE.exists():
        with np.load(SAMPLE, allow_pickle=False) as d:
            if len(d["images"]) >= 8:
                return np.ascontiguousarray(d["images"][:8])
    return _synthetic()


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_constants() -> None:
    assert CORRUPTIONS == (
        "pixelate", "jpeg", "defocus_blur", "motion_blur", "brightness_up", "brightness_down",
        "contrast_up", "contrast_down", "saturate", "stain_deposit", "bubble",
    )  # fmt: skip
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert AN2DL_STRENGTHS == (1, 2, 3)
    assert SUITES == ("clean", "hidden", "corruptions", "an2dl")


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_shape_dtype_deterministic_monotone(images: np.ndarray, name: str) -> None:
    before = images.copy()
    mads = []
    for s in SEVERITIES:
        out = corrupt(images, name, s, seed=0)
        assert out.shape == images.shape and out.dtype == np.uint8
        again = corrupt(images, name, s, seed=0)
        assert np.array_equal(out, again), f"{name}@{s} not deterministic"
        mads.append(_mad(out, images))
    assert np.array_equal(images, before), "input was modified"
    assert mads[0] > 0, f"{name}@1 changed nothing"
    assert all(a < b for a, b in zip(mads, mads[1:])), f"{name} MAD not increasing: {mads}"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_seed(images: np.ndarray, name: str) -> None:
    a, b = corrupt(images, name, 3, seed=0), corrupt(images, name, 3, seed=1)
    if name in RANDOM:
        assert not np.array_equal(a, b), f"{name}: seed has no effect"
    else:
        assert np.array_equal(a, b), f"{name} is deterministic and should ignore the seed"


def test_an2dl_shape_deterministic_seed_monotone(images: np.ndarray) -> None:
    mads = []
    for k in AN2DL_STRENGTHS:
        out = an2dl_shift(images, k, seed=0)
        assert out.shape == images.shape and out.dtype == np.uint8
        assert np.array_equal(out, an2dl_shift(images, k, seed=0))
        mads.append(_mad(out, images))
    assert mads[0] > 0 and mads[0] < mads[1] < mads[2], mads
    assert not np.array_equal(an2dl_shift(images, 2, seed=0), an2dl_shift(images, 2, seed=7))


def test_call_order_does_not_matter(images: np.ndarray) -> None:
    first = corrupt(images, "bubble", 2, seed=3)
    an2dl_shift(images, 1, seed=3)
    corrupt(images, "stain_deposit", 4, seed=3)
    assert np.array_equal(first, corrupt(images, "bubble", 2, seed=3))


def test_empty_and_other_sizes() -> None:
    empty = np.zeros((0, 96, 96, 3), np.uint8)
    assert corrupt(empty, "bubble", 3).shape == empty.shape
    assert an2dl_shift(empty, 1).shape == empty.shape
    small = _synthetic(3)[:, :64, :80]
    for name in CORRUPTIONS:
        assert corrupt(small, name, 5).shape == small.shape
    assert an2dl_shift(small, 3).shape == small.shape
    view = _synthetic(3)[:, ::-1]  # non-contiguous input
    assert np.array_equal(corrupt(view, "jpeg", 2), corrupt(view.copy(), "jpeg", 2))


def test_physical_sanity() -> None:
    flat = np.full((2, 96, 96, 3), 200, np.uint8)
    grey = np.full((2, 96, 96, 3), 128, np.uint8)
    assert np.abs(corrupt(flat, "defocus_blur", 5).astype(int) - 200).max() <= 1
    assert np.abs(corrupt(flat, "motion_blur", 5).astype(int) - 200).max() <= 1
    assert np.abs(corrupt(flat, "pixelate", 5).astype(int) - 200).max() <= 1
    assert np.all(corrupt(flat, "brightness_up", 1) == 220)
    assert np.all(corrupt(flat, "brightness_down", 5) == 100)
    assert np.all(corrupt(flat, "contrast_down", 5) == 200)  # no contrast to lose
    assert np.all(corrupt(grey, "saturate", 5) == 128)  # grey has no hue to saturate
    stained = corrupt(flat, "stain_deposit", 5).astype(int)
    dark = stained.sum(-1) < 400
    assert dark.any() and np.all(stained <= 200)  # dye only absorbs light
    spots = stained[dark]
    assert spots[:, 2].mean() > spots[:, 1].mean()  # purple: blue kept more than green
    bubbled = corrupt(np.full((2, 96, 96, 3), 120, np.uint8), "bubble", 5).astype(int)
    assert (bubbled > 160).any() and (bubbled < 110).any()  # bright discs and dark edges


def test_corrupt_validation(images: np.ndarray) -> None:
    with pytest.raises(BcsubError, match="unknown corruption 'blur'.*pixelate"):
        corrupt(images, "blur", 1)
    for bad in (0, 6, True, 2.0, "3"):
        with pytest.raises(BcsubError, match="severity.*1, 2, 3, 4, 5"):
            corrupt(images, "jpeg", bad)  # type: ignore[arg-type]
    with pytest.raises(BcsubError, match="an2dl strength.*1, 2, 3"):
        an2dl_shift(images, 4)
    with pytest.raises(BcsubError, match="uint8"):
        corrupt(images.astype(np.float32), "jpeg", 1)
    with pytest.raises(BcsubError, match=r"\(n, H, W, 3\)"):
        corrupt(images[0], "jpeg", 1)


def test_plan_variants_default() -> None:
    plan = plan_variants()
    names = [v.name for v in plan]
    assert len(plan) == 1 + 3 + len(CORRUPTIONS) * len(SEVERITIES) + len(AN2DL_STRENGTHS)
    assert len(set(names)) == len(names)
    assert plan[0] == Variant("clean", "clean", "clean", 0)
    assert Variant("pixelate@3", "corruptions", "pixelate", 3) in plan
    assert [v.name for v in plan if v.suite == "an2dl"] == ["an2dl@1", "an2dl@2", "an2dl@3"]
    assert [v.name for v in plan if v.suite == "hidden"] == ["hidden@1", "hidden@2", "hidden@3"]
    assert all(v.name == f"{v.kind}@{v.severity}" for v in plan[1:])


@pytest.mark.parametrize(
    ("severities", "strengths"),
    [((1, 2), [1]), ((3,), [2]), ((4, 5), [3]), ((5, 1, 3), [1, 2, 3]), ((2, 4), [1, 3])],
)
def test_plan_variants_strength_mapping(severities: tuple[int, ...], strengths: list[int]) -> None:
    plan = plan_variants(("corruptions", "an2dl"), severities)
    assert [v.severity for v in plan if v.suite == "an2dl"] == strengths
    sevs = sorted(set(severities))
    assert [v.severity for v in plan if v.kind == "bubble"] == sevs
    assert not any(v.suite == "clean" for v in plan)


def test_plan_variants_validation() -> None:
    assert plan_variants("clean") == [Variant("clean", "clean", "clean", 0)]
    assert plan_variants(["clean"], []) == [Variant("clean", "clean", "clean", 0)]
    assert [v.name for v in plan_variants(["an2dl", "an2dl"])] == ["an2dl@1", "an2dl@2", "an2dl@3"]
    with pytest.raises(BcsubError, match="unknown suite 'noise'.*clean, hidden, corruptions, an2dl"):
        plan_variants(["clean", "noise"])
    with pytest.raises(BcsubError, match="severity 7.*1, 2, 3, 4, 5"):
        plan_variants(severities=(1, 7))
    with pytest.raises(BcsubError, match="no severity"):
        plan_variants(["corruptions"], [])
    with pytest.raises(BcsubError, match="no suite"):
        plan_variants([])


def test_apply_variant(images: np.ndarray) -> None:
    clean = apply_variant(images, Variant("clean", "clean", "clean", 0))
    assert np.array_equal(clean, images) and clean is not images
    v = Variant("bubble@2", "corruptions", "bubble", 2)
    assert np.array_equal(apply_variant(images, v, seed=5), corrupt(images, "bubble", 2, seed=5))
    v = Variant("an2dl@3", "an2dl", "an2dl", 3)
    assert np.array_equal(apply_variant(images, v, seed=5), an2dl_shift(images, 3, seed=5))
    with pytest.raises(BcsubError, match="unknown suite 'weird'"):
        apply_variant(images, Variant("x", "weird", "x", 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.severity = 1  # type: ignore[misc]


def test_hidden_shift_is_deterministic_and_grows_with_level(images: np.ndarray) -> None:
    from tools.shift.hidden import HIDDEN_LEVELS, hidden_shift

    outs = [hidden_shift(images, level) for level in HIDDEN_LEVELS]
    for out in outs:
        assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(outs[1], hidden_shift(images, 2))
    assert not np.array_equal(outs[1], hidden_shift(images, 2, seed=1))
    distances = [_mad(images, out) for out in outs]
    assert distances[0] < distances[1] < distances[2], distances
    with pytest.raises(BcsubError, match="hidden-shift level"):
        hidden_shift(images, 4)


def test_hidden_levels_scale_every_strength_and_stay_in_range() -> None:
    from tools.shift.hidden import CALIBRATED, PIXEL_OPS

    low, mid, high = (CALIBRATED.at_level(level) for level in (1, 2, 3))
    assert mid == CALIBRATED
    for field in ("magnitude", "colour", "tone", "geometry", "overlay_prob", "cutout_prob"):
        values = [getattr(s, field) for s in (low, mid, high)]
        assert values == sorted(values) and 0 <= values[0] and values[2] <= 1, (field, values)
    assert 1 <= low.ops_per_image <= high.ops_per_image <= len(PIXEL_OPS)


def test_calibrated_shift_is_the_one_bench_calibration_measured() -> None:
    """tools/shift/hidden.py's CALIBRATED and CALIBRATION are copied by hand from the calibration
    benchmark's results: they must be the values it measured (rerun bench/calibration.py score if not)."""
    import json

    from tools.shift.hidden import CALIBRATED, CALIBRATION

    results = json.loads((Path(__file__).resolve().parents[1] / "bench" / "results" / "calibration.json").read_text())
    measured = results["calibrated_shift"]
    assert {**measured, "overlay_alpha": tuple(measured["overlay_alpha"])} == dataclasses.asdict(CALIBRATED)
    assert CALIBRATION["mae"] == pytest.approx(results["mae_tuning_points"], abs=5e-4)
    assert CALIBRATION["held_out"] == results["held_out"]
    assert CALIBRATION["held_out_error"] == pytest.approx(results["held_out_error"], abs=5e-4)
    assert CALIBRATION["points"] == len(results["points"])


def test_hidden_shift_draws_its_pixel_ops_from_the_given_subset() -> None:
    """``ops`` narrows the pixel ops (bench/hidden_components.py measures each op alone); the default is all."""
    from tools.shift.hidden import CALIBRATED, PIXEL_OPS, hidden_shift

    images = _synthetic(6)
    ops_only = dataclasses.replace(CALIBRATED, cutout_prob=0.0, colour=0.0, tone=0.0, geometry=0.0)
    np.testing.assert_array_equal(hidden_shift(images, seed=3, ops=PIXEL_OPS), hidden_shift(images, seed=3))
    grey = hidden_shift(images, seed=3, shift=ops_only, ops=("grayscale",)).astype(np.float32)
    spread = lambda x: np.ptp(x.astype(np.float32), axis=-1).mean(axis=(1, 2))  # noqa: E731
    assert (spread(grey) <= spread(images) + 1e-3).all() and (spread(grey) < spread(images) - 1).sum() >= 5
    with pytest.raises(BcsubError, match="unknown pixel ops"):
        hidden_shift(images, ops=("invert",))
