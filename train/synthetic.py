"""Build an AN2DL-like training set from genuine cells: pasted non-cell pictures and duplicates.

The AN2DL 2024 training set holds two meme pictures blended over cells ("Shrek" x1600, "Rick
Astley" x200), each copied pixel-for-pixel under all labels, plus exact duplicates. This module
draws look-alike stand-ins (a cartoon face, a text banner) with PIL so cleaning can be tested
with known truth.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from submission.model import NUM_CLASSES
from train.cleaning import content_ids
from train.errors import BcsubError


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def draw_face(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A cartoon ogre-like face (green head, ears, eyes, mouth) on a flat background."""
    img = Image.new("RGB", (size, size), _colour(rng, 120, 256))
    d = ImageDraw.Draw(img)
    s = size / 96
    skin = (int(rng.integers(90, 150)), int(rng.integers(150, 210)), int(rng.integers(40, 90)))
    cx, cy = size / 2 + rng.uniform(-6, 6) * s, size / 2 + rng.uniform(-4, 6) * s
    for side in (-1, 1):  # trumpet ears
        ex = cx + side * 36 * s
        d.polygon([(ex, cy - 14 * s), (ex + side * 14 * s, cy - 24 * s), (ex, cy - 2 * s)], fill=skin)
    d.ellipse([cx - 34 * s, cy - 38 * s, cx + 34 * s, cy + 40 * s], fill=skin, outline=(30, 60, 10))
    for side in (-1, 1):  # eyes, pupils, brows
        ex = cx + side * 13 * s
        d.ellipse([ex - 8 * s, cy - 16 * s, ex + 8 * s, cy - 2 * s], fill=(250, 250, 240))
        d.ellipse([ex - 3 * s, cy - 12 * s, ex + 3 * s, cy - 5 * s], fill=(60, 40, 20))
        d.line([ex - 9 * s, cy - 22 * s + side * 2 * s, ex + 9 * s, cy - 22 * s - side * 2 * s],
               fill=(50, 70, 20), width=max(1, int(3 * s)))
    d.ellipse([cx - 6 * s, cy, cx + 6 * s, cy + 10 * s], fill=tuple(max(0, v - 30) for v in skin))
    d.arc([cx - 20 * s, cy + 4 * s, cx + 20 * s, cy + 30 * s], 20, 160, fill=(90, 20, 20),
          width=max(1, int(4 * s)))
    return np.asarray(img, dtype=np.uint8)


def draw_banner(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A diagonal colour gradient with stripes and a few lines of bold text."""
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    t = (np.add.outer(np.arange(size), np.arange(size)) / (2 * size - 2))[..., None]
    img = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for y in range(0, size, int(rng.integers(10, 18))):
        d.line([0, y, size, y + size // 3], fill=_colour(rng), width=2)
    try:
        font = ImageFont.load_default(size=max(8, size // 7))
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    words = ["NEVER", "GONNA", "GIVE", "YOU UP"]
    for row, word in enumerate(words):
        y = 6 + row * size // 4.5
        d.rectangle([2, y - 1, size - 2, y + size // 7 + 2], fill=_colour(rng, 0, 90))
        d.text((6 + int(rng.integers(0, 8)), y), word, fill=_colour(rng, 180, 256), font=font)
    return np.asarray(img, dtype=np.uint8)


def blended_picture(kind: int, cell: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A non-cell picture (kind 0 face, 1 banner) alpha-blended over a genuine cell image."""
    size = cell.shape[0]
    picture = (draw_face if kind % 2 == 0 else draw_banner)(rng, size)
    if picture.shape != cell.shape:
        picture = np.asarray(Image.fromarray(picture).resize(cell.shape[1::-1]), dtype=np.uint8)
    alpha = rng.uniform(0.65, 0.8)
    return np.clip(alpha * picture + (1 - alpha) * cell, 0, 255).round().astype(np.uint8)


def make_an2dl_like(
    images: np.ndarray,
    labels: np.ndarray,
    copies: tuple[int, ...] = (160, 20),
    n_exact_duplicates: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Genuine cells + copied non-cell pictures + duplicates, shuffled, with the truth.

    ``copies[i]`` is how many identical copies of picture i to add (pictures alternate face /
    banner); their labels cycle over all 8 classes. ``n_exact_duplicates`` genuine cells get a
    second copy with the same label, and one more gets a copy with a different label.
    Exact duplicates already in ``images`` are dropped first, so the truth is exact.

    Returns ``(images, labels (N, 1) uint8, truth)`` where truth holds index lists:
    ``outlier_indices`` (every picture copy), ``duplicate_copy_indices`` (the later index of each
    agreeing pair: a plan keeps the first), ``conflict_indices`` (both members of the conflicting
    pair), ``genuine_indices`` (what a perfect cleaner keeps), and the groups themselves.
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
        raise BcsubError(
            "make_an2dl_like needs images (N, H, W, 3) uint8 and one label per image; convert them"
        )
    pool = np.sort(np.unique(content_ids(images), return_index=True)[1])  # first of each
    need = n_exact_duplicates + 1 + len(copies)
    if len(pool) < need:
        raise BcsubError(f"{len(pool)} distinct images, need at least {need}; pass more cells")
    rng = np.random.default_rng(seed)
    parts_x: list[np.ndarray] = [images[pool]]
    parts_y: list[np.ndarray] = [labels[pool]]
    kinds: list[np.ndarray] = [np.zeros(len(pool), np.int64)]  # 0 genuine, 1+i picture i, -k dup k
    for i, count in enumerate(copies):
        picture = blended_picture(i, images[pool[rng.integers(len(pool))]], rng)
        parts_x.append(np.broadcast_to(picture, (count, *picture.shape)))
        parts_y.append(rng.permutation((np.arange(count) + rng.integers(NUM_CLASSES)) % NUM_CLASSES))
        kinds.append(np.full(count, 1 + i))
    dup_src = rng.choice(len(pool), size=n_exact_duplicates + 1, replace=False)
    dup_y = labels[pool[dup_src]].copy()
    dup_y[-1] = (dup_y[-1] + 1 + rng.integers(NUM_CLASSES - 1)) % NUM_CLASSES  # the conflict
    parts_x.append(images[pool[dup_src]])
    parts_y.append(dup_y)
    kinds.append(-1 - np.arange(len(dup_src)))

    order = rng.permutation(sum(len(k) for k in kinds))
    all_x = np.concatenate(parts_x)[order]
    all_y = np.concatenate(parts_y)[order].astype(np.uint8).reshape(-1, 1)
    kind = np.concatenate(kinds)[order]
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))  # original slot -> shuffled index

    pairs = [sorted([int(position[s]), int(np.flatnonzero(kind == -1 - k)[0])])
             for k, s in enumerate(dup_src)]
    outlier_groups = [np.flatnonzero(kind == 1 + i).tolist() for i in range(len(copies))]
    outliers = sorted(i for g in outlier_groups for i in g)
    dup_copies = sorted(p[1] for p in pairs[:-1])
    conflicts = pairs[-1]
    removed = set(outliers) | set(dup_copies) | set(conflicts)
    truth = {
        "outlier_indices": outliers,
        "duplicate_copy_indices": dup_copies,
        "conflict_indices": conflicts,
        "genuine_indices": [i for i in range(len(order)) if i not in removed],
        "outlier_groups": outlier_groups,
        "duplicate_groups": pairs[:-1],
        "conflict_groups": [conflicts],
        "input_duplicates_dropped": int(len(images) - len(pool)),
    }
    return all_x, all_y, truth
