"""Tests for tools.augment_preview: the preset preview grid."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_augment import _images
from tools.augment_preview import preview_grid
from train.errors import BcsubError


@pytest.mark.parametrize("preset", ["none", "v2"])
def test_preview_grid_writes_png(tmp_path, preset: str) -> None:
    out = preview_grid(_images(3).astype(np.uint8), preset, tmp_path / "p.png", n_views=2)
    assert out == tmp_path / "p.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary left behind


def test_preview_grid_rejects_bad_input(tmp_path) -> None:
    with pytest.raises(BcsubError, match="N, H, W, 3"):
        preview_grid(np.zeros((96, 96, 3)), "v1", tmp_path / "p.png")
    with pytest.raises(BcsubError, match="allowed|use one of"):
        preview_grid(_images(1), "bogus", tmp_path / "p.png")
