"""The images a zip has already seen. `bcsub package` records a fingerprint of every image its members trained
on and of every image they were validated on or the TTA was chosen on (``SEEN_FILE``, at the zip root beside
``model.py``, which never reads it); `bcsub local-score` counts the scored images among them. A score on seen
images is optimistic: on training images by far, on validation images by the choices made on them (the best
epoch, the TTA), so it no longer predicts the hidden set."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.errors import BcsubError
from train.runs import Member
from train.splits import DataFile, read_split

SEEN_FILE = "bcsub_seen.npz"
MAX_SEEN_BYTES = 64 * 2**20  # 8 bytes an image: millions of images; anything bigger is not ours
# Below this share of seen images a score moves by less than a point: a few duplicates across data files (PBC96 has
# one image of pbc96_val and one of pbc96_test that are pixel for pixel images of pbc96_train), not a wrong file.
FEW_SEEN_SHARE = 0.01


def fingerprints(images: np.ndarray) -> np.ndarray:
    """One 64-bit hash per image of (n, H, W, C) 0..255 pixels (float pixels are rounded to uint8 first, so an
    integral float copy of an image has the image's fingerprint)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    digests = b"".join(hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=8).digest()
                       for image in images)
    return np.frombuffer(digests, dtype="<u8").copy()


@dataclass
class Seen:
    """Sorted, unique fingerprints of the images trained on and of those only validated on."""

    training: np.ndarray
    validation: np.ndarray

    @classmethod
    def of(cls, training: list[np.ndarray], validation: list[np.ndarray]) -> Seen:
        trained = np.unique(np.concatenate(training or [np.zeros(0, "<u8")]))
        validated = np.unique(np.concatenate(validation or [np.zeros(0, "<u8")]))
        return cls(trained, np.setdiff1d(validated, trained))

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez_compressed(handle, training=self.training, validation=self.validation)

    @classmethod
    def from_zip(cls, zip_path: str | Path) -> Seen | None:
        """What a zip recorded, or None for one without a readable record (not made by `bcsub package`, or
        before it kept one): the record only adds an advisory, so it never stops a score."""
        try:
            with zipfile.ZipFile(zip_path) as archive:
                info = next((i for i in archive.infolist() if i.filename == SEEN_FILE), None)
                if info is None or info.file_size > MAX_SEEN_BYTES:
                    return None
                raw = archive.read(info)
            with np.load(io.BytesIO(raw), allow_pickle=False) as saved:
                return cls(saved["training"].astype("<u8"), saved["validation"].astype("<u8"))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None

    def count(self, images: np.ndarray) -> dict[str, int]:
        """How many of ``images`` were trained on, and how many more were validated on."""
        prints = fingerprints(images)
        return {"images": len(prints), "training": int(np.isin(prints, self.training).sum()),
                "validation": int(np.isin(prints, self.validation).sum())}


def seen_by(members: list[Member], selection_images: np.ndarray | None) -> tuple[Seen | None, str | None]:
    """The images the members' recorded splits (``split.json``) trained and validated on, plus those the TTA was
    chosen on; with a note when a data file could not be read (the record then leaves it out)."""
    training, validation, missing = [], [], []
    loaded: dict[str, np.ndarray] = {}

    def images_of(data: DataFile) -> np.ndarray | None:
        if data.sha256 not in loaded:
            try:
                loaded[data.sha256] = data.load().images
            except BcsubError:
                missing.append(data.path)
                return None
        return loaded[data.sha256]

    for member in members:
        split = read_split(member.run_dir)
        if split is None:
            continue
        if (images := images_of(split.data)) is not None:
            training.append(fingerprints(images[split.train]))
        if (images := images_of(split.val_file)) is not None:
            validation.append(fingerprints(images[split.val]))
    if selection_images is not None:
        validation.append(fingerprints(selection_images))
    note = f"the seen-images record leaves out {', '.join(sorted(set(missing)))} (gone or changed)" if missing else None
    if not training and not validation:
        return None, note
    return Seen.of(training, validation), note


def seen_share(counts: dict[str, int]) -> float:
    """The share of the scored images the zip trained or validated on."""
    return (counts["training"] + counts["validation"]) / max(counts["images"], 1)


def seen_warning(counts: dict[str, int]) -> str | None:
    """The advisory for a score on images the zip has seen (None when it has seen none of them)."""
    n, trained, validated = counts["images"], counts["training"], counts["validation"]
    if 0 < seen_share(counts) < FEW_SEEN_SHARE:
        how = "trained" if trained else "validated"
        return (f"{trained + validated} of {n} scored images are, pixel for pixel, images this zip {how} on "
                f"(duplicates across the data files): they can move the scores by at most {seen_share(counts):.1%}")
    if trained:
        more = f" (and {validated} more it was validated on)" if validated else ""
        return (f"{trained} of {n} scored images are images this zip trained on{more}: the scores are optimistic; "
                "score it on images no member trained or validated on, such as a held-out test split")
    if validated:
        return (f"{validated} of {n} scored images are this zip's validation images, on which it chose its best "
                "epochs and TTA: the scores read a little high (bcsub's CPU recipe on PBC96: about 0.01 clean and "
                "0.02 expected hidden above the test split); score a held-out test split for the hidden-set estimate")
    return None
