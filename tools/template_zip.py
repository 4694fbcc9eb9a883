"""Zips made the way 2024 teams made them: the official AN2DL template ``model.py`` and a ``weights.keras``.

bcsub's own zips rebuild their networks in code; these are the other kind, the one most submissions
on CodaBench were. ``local-score`` and ``check`` must treat them as first-class inputs, so the tests
and the calibration benchmark build them with this module.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

# The official AN2DL 2024 homework-1 template (its loader uses a path relative to the working directory).
TEMPLATE_MODEL_PY = '''import numpy as np

import tensorflow as tf
from tensorflow import keras as tfk
from tensorflow.keras import layers as tfkl


class Model:
    def __init__(self):
        """
        Initialize the internal state of the model. Note that the __init__
        method cannot accept any arguments.

        The following is an example loading the weights of a pre-trained
        model.
        """
        self.neural_network = tfk.models.load_model('weights.keras')

    def predict(self, X):
        """
        Predict the labels corresponding to the input X. Note that X is a numpy
        array of shape (n_samples, 96, 96, 3) and the output should be a numpy
        array of shape (n_samples,). Therefore, outputs must not be one-hot
        encoded.

        The following is an example of a prediction from the pre-trained model
        loaded in the __init__ method.
        """
        preds = self.neural_network.predict(X{scaling})
        if len(preds.shape) == 2:
            preds = np.argmax(preds, axis=1)
        return preds
'''


def template_model_py(scale: float = 1.0) -> str:
    """The template's source; ``scale`` 1/255 makes ``predict`` divide the pixels by 255 first."""
    if scale == 1.0:
        return TEMPLATE_MODEL_PY.format(scaling="")
    if abs(scale - 1 / 255) < 1e-12:
        return TEMPLATE_MODEL_PY.format(scaling=" / 255.0")
    return TEMPLATE_MODEL_PY.format(scaling=f" * {scale!r}")


def write_template_zip(model, zip_path: str | Path, scale: float = 1.0, model_py: str | None = None) -> Path:
    """Save ``model`` as ``weights.keras`` and zip it flat with the template ``model.py``."""
    with tempfile.TemporaryDirectory(prefix="bcsub_template_") as tmp:
        weights = Path(tmp) / "weights.keras"
        model.save(weights)
        return zip_submission(zip_path, model_py if model_py is not None else template_model_py(scale), [weights])


def zip_submission(zip_path: str | Path, model_py: str, files: list[Path]) -> Path:
    """Zip ``model_py`` (as ``model.py``) and ``files`` flat, the way a team uploads them."""
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.py", model_py)
        for file in files:
            archive.write(file, arcname=Path(file).name)
    return zip_path
