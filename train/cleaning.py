"""Find exact/near duplicates, label conflicts and non-cell outliers; plan what to remove.

Pure array logic (no plotting, no files). Typical use::

    result = inspect_arrays(images, labels)
    plan = plan_cleaning(result, labels, len(labels))
    images, labels = images[plan.keep], labels[plan.keep]

Outliers come from two sources, combined:

- *duplicate structure*: an exact-duplicate group with >= ``COPY_GROUP_MIN_SIZE`` copies or spread
  over >= ``COPY_GROUP_MIN_LABELS`` labels is a pasted non-cell picture (the AN2DL memes), so every
  member is an outlier, whatever it looks like;
- *appearance*: colour/texture statistics per image scored by an IsolationForest fitted on one copy
  of each distinct image (copies would otherwise form a dense cluster that looks normal), plus the
  share of an image's pixels in colours that are rare across the set (stained cells share a narrow
  palette; pasted pictures bring new colours).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import RobustScaler

from submission.model import pixel_problem
from train.errors import BcsubError

COPY_GROUP_MIN_SIZE = 5
COPY_GROUP_MIN_LABELS = 3
DETECTORS = ("iforest", "lof")
# "auto": flag an image when its detector score is this many robust SDs (MAD) above the median.
# Chosen on the 9,914 PBC images: <= 0.6% of genuine cells flagged, >= 98% of pasted pictures.
AUTO_Z = 8.0
# Colour palette: a colour (8x8x8 RGB bin) is rare if it holds < RARE_COLOUR_FREQ of all pixels;
# an image with > RARE_COLOUR_THRESHOLD of its pixels in rare colours is flagged.
COLOUR_BINS = 8
RARE_COLOUR_FREQ = 1e-4
RARE_COLOUR_THRESHOLD = 0.25
# The appearance evidence needs this many distinct images to learn what normal looks like.
MIN_DISTINCT_FOR_APPEARANCE = 50
# Added to the score of copy-group members so they rank above every appearance-only outlier.
COPY_GROUP_BONUS = 1.0
_HASH_SIDE = 32  # perceptual hash: grayscale resized to 32x32, DCT, top-left 8x8
_HASH_BITS = 8


@dataclass
class InspectionResult:
    """What :func:`inspect_arrays` found; indices refer to the input arrays."""

    class_counts: dict[int, int]
    imbalance_ratio: float
    exact_groups: list[list[int]]
    near_groups: list[list[int]]
    conflict_groups: list[list[int]]
    outlier_indices: list[int]
    outlier_scores: np.ndarray
    # why each outlier was flagged: "copies" (copy group), "appearance" (detector) or "colour"
    outlier_by: dict[int, str] = field(default_factory=dict)
    features: np.ndarray | None = field(default=None, repr=False)  # (N, F) appearance features
    params: dict = field(default_factory=dict)

    def to_json(self, labels: np.ndarray) -> dict:
        """A JSON-ready summary: groups as lists of {index, label}, outliers with scores."""
        labels = _flat_labels(labels)

        def members(group: list[int]) -> list[dict]:
            return [{"index": int(i), "label": int(labels[i])} for i in group]

        outliers = sorted(self.outlier_indices, key=lambda i: (-self.outlier_scores[i], i))
        return {
            "n_images": int(len(labels)),
            "class_counts": {str(k): int(v) for k, v in sorted(self.class_counts.items())},
            "imbalance_ratio": round(float(self.imbalance_ratio), 4),
            "params": self.params,
            "exact_groups": [members(g) for g in self.exact_groups],
            "near_groups": [members(g) for g in self.near_groups],
            "conflict_groups": [members(g) for g in self.conflict_groups],
            "outliers": [
                {
                    "index": int(i),
                    "label": int(labels[i]),
                    "score": round(float(self.outlier_scores[i]), 4),
                    "by": self.outlier_by.get(int(i), "appearance"),
                }
                for i in outliers
            ],
        }


@dataclass
class CleaningPlan:
    """``keep`` is a bool mask over the input; ``removed`` explains every dropped index."""

    keep: np.ndarray
    removed: list[dict]

    def summary(self) -> dict[str, int]:
        """Number of removed images per reason."""
        out: dict[str, int] = {}
        for item in self.removed:
            out[item["reason"]] = out.get(item["reason"], 0) + 1
        return out


# --------------------------------------------------------------------------- inputs


def _flat_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise BcsubError(f"labels have shape {labels.shape}, expected (N,) or (N, 1); reshape them")
    return labels.astype(np.int64)


def _check_inputs(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    problem = pixel_problem(images, side=None, uint8_only=True)
    if problem:
        raise BcsubError(f"{problem}; pass raw 0..255 RGB pixels")
    labels = _flat_labels(labels)
    if len(labels) != len(images):
        raise BcsubError(
            f"{len(images)} images but {len(labels)} labels; pass one label per image"
        )
    if len(images) == 0:
        raise BcsubError("no images to inspect; pass a non-empty array")
    return labels


# --------------------------------------------------------------------------- grouping


def _groups_from_ids(ids: np.ndarray, min_size: int = 2) -> list[list[int]]:
    """Indices sharing an id, as groups of >= min_size, largest first (ties: first index)."""
    order = np.argsort(ids, kind="stable")
    parts = np.split(order, np.flatnonzero(np.diff(ids[order])) + 1)
    groups = [sorted(p.tolist()) for p in parts if len(p) >= min_size]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def content_ids(images: np.ndarray) -> np.ndarray:
    """(N,) int ids, equal exactly when two images are byte-identical (blake2b of the pixels)."""
    digests = np.array(
        [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest() for im in images]
    )
    return np.unique(digests, return_inverse=True)[1].reshape(-1)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix averaging input pixels into n_out equal bins (area resize)."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    px = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(edges[1:, None], px + 1) - np.maximum(edges[:-1, None], px), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (n, n)."""
    k, m = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    mat = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * m + 1) * k / (2 * n))
    mat[0] /= np.sqrt(2.0)
    return mat


def perceptual_hashes(images: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """64-bit DCT hash per image (N,) uint64: grayscale -> 32x32 -> DCT -> 8x8 > median."""
    _, h, w, _ = images.shape
    dct = _dct_matrix(_HASH_SIDE)[:_HASH_BITS]
    left = (dct @ _area_matrix(h, _HASH_SIDE)).astype(np.float32)  # (8, H)
    right = (dct @ _area_matrix(w, _HASH_SIDE)).astype(np.float32)  # (8, W)
    gray_w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = np.empty(len(images), dtype=np.uint64)
    for s in range(0, len(images), chunk):
        gray = images[s : s + chunk].astype(np.float32) @ gray_w  # (c, H, W)
        coef = np.matmul(left, gray @ right.T).reshape(len(gray), -1)  # (c, 8, 8) -> (c, 64)
        bits = coef > np.median(coef[:, 1:], axis=1, keepdims=True)
        out[s : s + chunk] = np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)
    return out


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element (np.bitwise_count needs numpy >= 2)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x[..., None].view(np.uint8), axis=-1).sum(-1, dtype=np.uint8)


def _near_pairs(hashes: np.ndarray, threshold: int, chunk: int = 1024) -> tuple[np.ndarray, ...]:
    """All pairs (i < j) with Hamming distance <= threshold."""
    rows, cols = [], []
    for s in range(0, len(hashes), chunk):
        dist = _popcount(hashes[s : s + chunk, None] ^ hashes[None, :])
        r, c = np.nonzero(dist <= threshold)
        upper = c > r + s
        rows.append(r[upper] + s)
        cols.append(c[upper])
    return np.concatenate(rows), np.concatenate(cols)


def near_duplicate_groups(
    images: np.ndarray, ids: np.ndarray, threshold: int
) -> list[list[int]]:
    """Groups linking >= 2 *distinct* images whose hashes differ by <= threshold bits.

    Distinct images are compared once (one representative per exact-duplicate group); a group
    then lists every member of the linked exact groups.
    """
    reps = np.unique(ids, return_index=True)[1]  # first index of each content id, ordered by id
    if threshold < 0 or len(reps) < 2:
        return []
    r, c = _near_pairs(perceptual_hashes(images[reps]), threshold)
    if len(r) == 0:
        return []
    n = len(reps)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    comp_size = np.bincount(comp)
    linked = comp_size[comp] >= 2  # per representative (content id)
    member_comp = np.where(linked[ids], comp[ids], -1)
    return [g for g in _groups_from_ids(member_comp) if member_comp[g[0]] >= 0]


# --------------------------------------------------------------------------- appearance


def _percentiles(x: np.ndarray, qs: tuple[int, ...]) -> np.ndarray:
    """Per-image percentiles of x (c, P, K) over axis 1 -> (c, len(qs) * K)."""
    return np.percentile(x, qs, axis=1).transpose(1, 0, 2).reshape(len(x), -1)


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised RGB (.., 3) in 0..1 -> hue (turns 0..1), saturation, value."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(c, 1e-6)
    h = np.where(
        v == r, ((g - b) / safe) % 6.0, np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    h = np.where(c > 0, h / 6.0, 0.0)
    return h, s, v


def _per_image_bincount(codes: np.ndarray, bins: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Histogram of integer codes (c, P) in 0..bins-1 for each image -> (c, bins)."""
    n = len(codes)
    offset = codes + bins * np.arange(n)[:, None]
    w = None if weights is None else weights.ravel()
    return np.bincount(offset.ravel(), weights=w, minlength=bins * n).reshape(n, bins)


def _chunk_features(x: np.ndarray) -> np.ndarray:
    """Colour/texture statistics for a chunk of images (c, H, W, 3) float32 in 0..1."""
    n, h, w, _ = x.shape
    flat = x.reshape(n, -1, 3)
    hue, sat, val = _hsv(flat)
    hsv = np.stack([sat, val], axis=-1)
    qs = (5, 25, 50, 75, 95)
    feats = [
        flat.mean(1), flat.std(1), _percentiles(flat, qs),
        hsv.mean(1), hsv.std(1), _percentiles(hsv, qs),
    ]
    # hue is circular: saturation-weighted mean direction, plus a 12-bin weighted histogram
    angle = 2 * np.pi * hue
    feats += [(sat * np.cos(angle)).mean(1, keepdims=True), (sat * np.sin(angle)).mean(1, keepdims=True)]
    hue_hist = _per_image_bincount(np.minimum((hue * 12).astype(np.int64), 11), 12, sat)
    feats.append(hue_hist / np.maximum(sat.sum(1, keepdims=True), 1e-6))
    # colourfulness (Hasler & Suesstrunk)
    rg = flat[..., 0] - flat[..., 1]
    yb = 0.5 * (flat[..., 0] + flat[..., 1]) - flat[..., 2]
    feats.append(np.stack([rg.mean(1), rg.std(1), yb.mean(1), yb.std(1)], axis=1))
    # gradient / edge energy on grayscale
    gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gx = np.diff(gray, axis=2)[:, :-1, :]
    gy = np.diff(gray, axis=1)[:, :, :-1]
    mag = np.sqrt(gx**2 + gy**2).reshape(n, -1)
    lap = (
        gray[:, 1:-1, 1:-1] * 4 - gray[:, :-2, 1:-1] - gray[:, 2:, 1:-1] - gray[:, 1:-1, :-2]
        - gray[:, 1:-1, 2:]
    ).reshape(n, -1)
    feats.append(
        np.stack(
            [mag.mean(1), mag.std(1), np.percentile(mag, 90, axis=1), (mag > 0.1).mean(1),
             np.abs(lap).mean(1), lap.std(1)],
            axis=1,
        )
    )
    # centre vs border: cells are centred on a fairly uniform background
    bh, bw = max(1, h // 8), max(1, w // 8)
    ring = np.ones((h, w), dtype=bool)
    ring[bh:-bh, bw:-bw] = False
    centre = x[:, h // 3 : h - h // 3, w // 3 : w - w // 3].reshape(n, -1, 3)
    border = x[:, ring]  # (n, P, 3)
    feats += [centre.mean(1) - border.mean(1), border.std(1), centre.std(1)]
    return np.concatenate(feats, axis=1).astype(np.float32)


def _colour_codes(x: np.ndarray) -> np.ndarray:
    """Joint RGB bin (0..COLOUR_BINS**3-1) of every pixel of x (c, H, W, 3) in 0..1 -> (c, P)."""
    q = np.minimum((x.reshape(len(x), -1, 3) * COLOUR_BINS).astype(np.int64), COLOUR_BINS - 1)
    return (q[..., 0] * COLOUR_BINS + q[..., 1]) * COLOUR_BINS + q[..., 2]


def describe_images(
    images: np.ndarray, side: int = 48, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Appearance features (N, F) and joint colour histograms (N, COLOUR_BINS**3), float32.

    Images are first area-resized to ``side`` x ``side`` (statistics barely change, 4x faster).
    """
    _, h, w, _ = images.shape
    rows = _area_matrix(h, min(side, h)).astype(np.float32) / 255.0
    cols = _area_matrix(w, min(side, w)).astype(np.float32).T
    feats, hists = [], []
    for s in range(0, len(images), chunk):
        x = images[s : s + chunk].astype(np.float32).transpose(0, 3, 1, 2)  # (c, 3, H, W)
        small = np.ascontiguousarray(np.matmul(np.matmul(rows, x), cols).transpose(0, 2, 3, 1))
        feats.append(_chunk_features(small))
        codes = _colour_codes(small)
        hists.append((_per_image_bincount(codes, COLOUR_BINS**3) / codes.shape[1]).astype(np.float32))
    return np.concatenate(feats), np.concatenate(hists)


def rare_colour_fraction(hists: np.ndarray, fit_index: np.ndarray) -> np.ndarray:
    """Per image, the fraction of its pixels whose colour is rare (< RARE_COLOUR_FREQ) in the set.

    The palette is learned from ``fit_index`` rows (one copy per distinct image): stained cells on
    their background share a narrow palette, pasted pictures bring colours no cell has.
    """
    palette = hists[fit_index].mean(axis=0)
    return hists @ (palette < RARE_COLOUR_FREQ).astype(np.float32)


def _robust_z(scores: np.ndarray, ref: np.ndarray) -> np.ndarray:
    med = np.median(ref)
    mad = 1.4826 * np.median(np.abs(ref - med))
    return (scores - med) / max(mad, 1e-9)


def detector_scores(
    features: np.ndarray, fit_index: np.ndarray, detector: str = "iforest", seed: int = 0
) -> np.ndarray:
    """Robust z-score (median/MAD over ``fit_index``) of a density detector's anomaly score.

    ``iforest``: IsolationForest (300 trees, up to 2048 samples each); ``lof``: LocalOutlierFactor
    (20 neighbours). Both are fitted on ``fit_index`` rows (one per distinct image).
    """
    if detector not in DETECTORS:
        raise BcsubError(f"unknown outlier detector '{detector}'; use one of {', '.join(DETECTORS)}")
    x = RobustScaler().fit(features[fit_index]).transform(features)
    if detector == "iforest":
        model = IsolationForest(
            n_estimators=300, max_samples=min(len(fit_index), 2048), random_state=seed
        )
    else:
        model = LocalOutlierFactor(n_neighbors=int(min(20, max(1, len(fit_index) - 1))), novelty=True)
    raw = -model.fit(x[fit_index]).score_samples(x)
    return _robust_z(raw, raw[fit_index])


def _check_contamination(contamination: float | str) -> None:
    if contamination == "auto":
        return
    try:
        ok = 0.0 < float(contamination) <= 0.5
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise BcsubError(f"contamination {contamination!r} invalid; use 'auto' or a float in (0, 0.5]")


def appearance_scores(
    features: np.ndarray,
    hists: np.ndarray,
    fit_index: np.ndarray,
    contamination: float | str = "auto",
    detector: str = "iforest",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores in units of the flagging threshold (>= 1 means flagged) and which evidence won.

    Score = max(detector z / z threshold, rare-colour fraction / RARE_COLOUR_THRESHOLD).
    The z threshold is AUTO_Z for "auto", else the (1 - contamination) quantile over
    ``fit_index``. Returns (scores, from_colour) where from_colour marks colour-driven scores.
    """
    _check_contamination(contamination)
    z = detector_scores(features, fit_index, detector, seed)
    z_thr = AUTO_Z if contamination == "auto" else float(
        np.quantile(z[fit_index], 1.0 - float(contamination)))
    by_detector = z / max(z_thr, 1e-6)
    by_colour = rare_colour_fraction(hists, fit_index) / RARE_COLOUR_THRESHOLD
    return np.maximum(by_detector, by_colour), by_colour > by_detector


# --------------------------------------------------------------------------- inspection


def _label_sets(groups: list[list[int]], labels: np.ndarray) -> list[np.ndarray]:
    return [np.unique(labels[g]) for g in groups]


def inspect_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    near_threshold: int = 4,
    contamination: float | str = "auto",
    seed: int = 0,
    detector: str = "iforest",
) -> InspectionResult:
    """Find duplicates, near duplicates, label conflicts and outliers in ``images`` (N,H,W,3) uint8.

    ``near_threshold``: max Hamming distance (of 64 bits) between perceptual hashes; -1 disables.
    ``contamination``: "auto" (robust z > AUTO_Z) or the expected outlier fraction of distinct
    images for the appearance detector. ``outlier_scores`` are in units of that threshold
    (>= 1: flagged by appearance); members of copy groups get +COPY_GROUP_BONUS on top.
    With fewer than MIN_DISTINCT_FOR_APPEARANCE distinct images only copy groups are outliers.
    """
    labels = _check_inputs(images, labels)
    _check_contamination(contamination)
    classes, counts = np.unique(labels, return_counts=True)

    ids = content_ids(images)
    reps = np.unique(ids, return_index=True)[1]  # one index per distinct image
    exact = _groups_from_ids(ids)
    near = near_duplicate_groups(images, ids, near_threshold)
    groups = exact + near
    conflicts = [g for g, s in zip(groups, _label_sets(groups, labels), strict=True) if len(s) > 1]

    features, hists = describe_images(images)
    if len(reps) >= MIN_DISTINCT_FOR_APPEARANCE:
        scores, from_colour = appearance_scores(features, hists, reps, contamination, detector, seed)
    else:  # too few images to learn what a normal cell looks like
        scores, from_colour = np.zeros(len(labels)), np.zeros(len(labels), dtype=bool)
    scores = scores.astype(np.float64)
    by = {int(i): ("colour" if from_colour[i] else "appearance") for i in np.flatnonzero(scores >= 1)}
    for group, label_set in zip(exact, _label_sets(exact, labels), strict=True):
        if len(group) >= COPY_GROUP_MIN_SIZE or len(label_set) >= COPY_GROUP_MIN_LABELS:
            scores[group] = np.maximum(scores[group], 1.0) + COPY_GROUP_BONUS
            by.update(dict.fromkeys(group, "copies"))
    return InspectionResult(
        class_counts={int(c): int(k) for c, k in zip(classes, counts, strict=True)},
        imbalance_ratio=float(counts.max() / counts.min()),
        exact_groups=exact,
        near_groups=near,
        conflict_groups=conflicts,
        outlier_indices=sorted(by),
        outlier_scores=scores,
        outlier_by=by,
        features=features,
        params={
            "near_threshold": int(near_threshold),
            "contamination": contamination,
            "detector": detector,
            "seed": int(seed),
            "auto_z": AUTO_Z,
            "rare_colour_threshold": RARE_COLOUR_THRESHOLD,
            "copy_group_min_size": COPY_GROUP_MIN_SIZE,
            "copy_group_min_labels": COPY_GROUP_MIN_LABELS,
            "n_distinct": int(len(reps)),
        },
    )


# --------------------------------------------------------------------------- plan


def plan_cleaning(result: InspectionResult, labels: np.ndarray, n: int) -> CleaningPlan:
    """Decide what to drop: outliers; all of a label-conflicting group; all but one agreeing copy.

    Exact groups are handled before near groups; the kept copy is the lowest remaining index.
    """
    labels = _flat_labels(labels)
    if len(labels) != n:
        raise BcsubError(f"plan for {n} images but {len(labels)} labels; pass the inspected labels")
    keep = np.ones(n, dtype=bool)
    reasons: dict[int, tuple[str, int | None, str | None]] = {}

    def drop(i: int, reason: str, group: int | None, kind: str | None) -> None:
        if keep[i]:
            keep[i] = False
            reasons[i] = (reason, group, kind)

    exact_of = {i: k for k, group in enumerate(result.exact_groups) for i in group}
    for i in result.outlier_indices:
        group = exact_of.get(i) if result.outlier_by.get(i) == "copies" else None
        drop(int(i), "outlier", group, None if group is None else "exact")
    for kind, groups in (("exact", result.exact_groups), ("near", result.near_groups)):
        for k, group in enumerate(groups):
            alive = [i for i in group if keep[i]]
            if not alive:
                continue
            if len(np.unique(labels[group])) > 1:
                for i in alive:
                    drop(i, "label_conflict", k, kind)
            else:
                for i in alive[1:]:
                    drop(i, "duplicate_copy", k, kind)
    removed = [
        {"index": i, "label": int(labels[i]), "reason": r, "group": g, "group_kind": kd}
        for i, (r, g, kd) in sorted(reasons.items())
    ]
    return CleaningPlan(keep=keep, removed=removed)
