"""The shift suites of ``bcsub local-score``: which shifted copies of the test data a run scores.

A suite turns the requested severities into (kind, level) pairs and makes each shifted copy; every
pair becomes a ``Variant`` named ``kind@level`` ("clean" for the unshifted copy). A new suite joins
with one ``SUITE_REGISTRY`` entry (its image code lives in its own module of this package).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tools.shift.an2dl import an2dl_shift, strengths_for
from tools.shift.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from tools.shift.hidden import HIDDEN_LEVELS, hidden_shift
from tools.shift.ops import check_images, check_level
from train.errors import BcsubError


@dataclass(frozen=True)
class Variant:
    """One shifted copy of the data."""

    name: str  # "clean", "pixelate@3", "an2dl@2"
    suite: str  # a SUITES name
    kind: str  # "clean", corruption name, or "an2dl"
    severity: int  # the level within the suite; 0 for clean


@dataclass(frozen=True)
class Suite:
    """``variants(severities)``: the (kind, level) pairs a sorted list of severities 1..5 asks for;
    ``apply(images, kind, level, seed)``: one shifted copy of a (n,H,W,3) uint8 batch."""

    variants: Callable[[list[int]], list[tuple[str, int]]]
    apply: Callable[[np.ndarray, str, int, int], np.ndarray]


def _unshifted(images: np.ndarray, kind: str, level: int, seed: int) -> np.ndarray:
    check_images(images)
    return images.copy()


# Every suite, in report order.
SUITE_REGISTRY: dict[str, Suite] = {
    "clean": Suite(lambda severities: [("clean", 0)], _unshifted),
    # The calibrated stand-in for CodaBench's hidden set (levels 1..3, whatever the severities).
    "hidden": Suite(lambda severities: [("hidden", k) for k in HIDDEN_LEVELS],
                    lambda images, kind, level, seed: hidden_shift(images, level, seed)),
    "corruptions": Suite(lambda severities: [(c, v) for c in CORRUPTIONS for v in severities], corrupt),
    "an2dl": Suite(lambda severities: [("an2dl", k) for k in strengths_for(severities)],
                   lambda images, kind, level, seed: an2dl_shift(images, level, seed)),
}
SUITES: tuple[str, ...] = tuple(SUITE_REGISTRY)
SHIFT_SUITES: tuple[str, ...] = tuple(s for s in SUITES if s != "clean")


def make_variant(suite: str, kind: str, level: int) -> Variant:
    """The variant of ``suite`` for one (kind, level) pair, with its report name."""
    return Variant(f"{kind}@{level}" if level else kind, suite, kind, level)


def plan_variants(
    suites: Sequence[str] = SUITES, severities: Sequence[int] = SEVERITIES
) -> list[Variant]:
    """List the variants of the requested suites (in the order asked), validating names."""
    suites = (suites,) if isinstance(suites, str) else tuple(suites)
    severities = (severities,) if isinstance(severities, int) else tuple(severities)
    for s in suites:
        if s not in SUITE_REGISTRY:
            raise BcsubError(f"unknown suite {s!r}; use one of {', '.join(SUITES)}")
    for v in severities:
        check_level(v, SEVERITIES, "severity")
    suites = tuple(dict.fromkeys(suites))
    if not suites:
        raise BcsubError(f"no suite given; use one or more of {', '.join(SUITES)}")
    sevs = sorted({int(v) for v in severities})
    out: list[Variant] = []
    for suite in suites:
        pairs = SUITE_REGISTRY[suite].variants(sevs)
        if not pairs:
            raise BcsubError(f"no severity given for suite {suite!r}; use one or more of {SEVERITIES}")
        out += [make_variant(suite, kind, level) for kind, level in pairs]
    return out


def apply_variant(images: np.ndarray, variant: Variant, seed: int = 0) -> np.ndarray:
    """Return ``images`` shifted as ``variant`` says (a copy for "clean")."""
    suite = SUITE_REGISTRY.get(variant.suite)
    if suite is None:
        raise BcsubError(f"unknown suite {variant.suite!r} in variant; use one of {', '.join(SUITES)}")
    return suite.apply(images, variant.kind, variant.severity, seed)
