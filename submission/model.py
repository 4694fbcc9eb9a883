"""bcsub CodaBench runtime: the ``model.py`` that ships in the submission zip.

This one file is copied verbatim into the zip. The training code and the tests import it too, so the
network, the preprocessing and the test-time augmentation (TTA) that run on CodaBench are the ones that
were trained and tested. It imports only numpy, tensorflow and keras, and keeps to APIs that exist in
Keras 3.4 / TensorFlow 2.17 (the likely CodaBench server).

Files next to this one (written by ``bcsub package``):
- ``bcsub_submission.json``: the members, their ensemble weights, the TTA views (with BatchNorm adaptation,
  image repair and the zoom undo, when on) and the batch size;
- ``member_K.weights.npz``: the weights of member K, in ``model.get_weights()`` order.
"""

from __future__ import annotations

import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf
from keras import layers

# The challenge: 96x96 RGB images of blood cells, label k is CLASS_NAMES[k]. The rest of bcsub imports these
# facts (and ``pixel_problem``) from here: this file must stay self-contained, so it is their source.
CLASS_NAMES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "immature granulocyte",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (96, 96, 3)
MANIFEST_NAME = "bcsub_submission.json"
WEIGHTS_FORMAT = "bcsub-weights-v1"
DEFAULT_BATCH_SIZE = 256
# Faster-moving BatchNorm statistics for the from-scratch nets: with strong augmentation and a high
# learning rate, Keras' default 0.99 lags behind the weights and validation accuracy swings wildly.
BN_MOMENTUM = 0.9

# --------------------------------------------------------------------------- network


def _conv_bn(x, filters: int, stride: int = 1, relu: bool = True):
    """3x3 convolution, batch norm and (optionally) ReLU."""
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.Activation("relu")(x) if relu else x


def _residual_block(x, filters: int, stride: int):
    shortcut = x
    y = _conv_bn(x, filters, stride)
    y = _conv_bn(y, filters, relu=False)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM)(shortcut)
    return layers.Activation("relu")(layers.Add()([y, shortcut]))


def _small_resnet(input_shape: tuple[int, int, int], widths: tuple[int, ...],
                  depths: tuple[int, ...] | None = None) -> keras.Model:
    """A compact ResNet for training from scratch on CPU (``resnet-small`` is about 1.2M weights).

    ``depths``: residual blocks per stage (default one each); the first block of every stage but the first
    halves the side. The stride-2 stem keeps it cheap (about 60M multiply-adds at 64 px), so 8-view TTA
    stays fast on CPU.
    """
    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, widths[0], stride=2)
    for i, (filters, depth) in enumerate(zip(widths, depths or (1,) * len(widths))):
        for j in range(depth):
            x = _residual_block(x, filters, stride=2 if i > 0 and j == 0 else 1)
    return keras.Model(inputs, x, name="backbone")


class PerImageStandardization(layers.Layer):
    """Per image and channel: subtract the mean, divide by the standard deviation (at least 1/255 of
    the pixel range). No weights, so the weight layout does not change."""

    def call(self, x):
        mean = keras.ops.mean(x, axis=(1, 2), keepdims=True)
        std = keras.ops.std(x, axis=(1, 2), keepdims=True)
        return (x - mean) / keras.ops.maximum(std, 1.0)


class FoldedStandardization(PerImageStandardization):
    """Solarize-proof standardisation: each value v becomes min(v, 255 - v) first, so an image and any
    solarized copy of it (every value above some threshold t replaced by 255 - v) look the same to the
    network. The price: v and 255 - v can no longer be told apart."""

    def call(self, x):
        return super().call(127.5 - keras.ops.abs(x - 127.5))


class LogitOffset(layers.Layer):
    """Adds fixed per-class offsets to the logits (from the model spec, no weights).

    A network trained on class-balanced batches learns a uniform class prior; adding log(train prior)
    turns its output back into the posterior for data with the training set's class mix.
    """

    def __init__(self, offsets, **kwargs):
        super().__init__(**kwargs)
        self.offsets = [float(v) for v in offsets]

    def call(self, logits):
        return logits + keras.ops.cast(keras.ops.convert_to_tensor(self.offsets), logits.dtype)

    def get_config(self):
        return {**super().get_config(), "offsets": self.offsets}


# What a network does to the 0..255 pixels before its backbone. "raw": nothing (the keras.applications
# model rescales them itself); "tf": scale to [-1, 1]; "unit": scale to [0, 1]; "standardize": per image
# and channel, zero mean and unit variance (brightness, contrast and colour-cast shifts cancel out); "fold":
# the same after folding v to min(v, 255 - v) (solarization cancels out too).
PREPROCESSING = {
    "raw": None,
    "tf": lambda: layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess"),
    "unit": lambda: layers.Rescaling(1 / 255.0, name="preprocess"),
    "standardize": lambda: PerImageStandardization(name="preprocess"),
    "fold": lambda: FoldedStandardization(name="preprocess"),
}


class Backbone(tuple):
    """A ``BACKBONES`` entry: ``(build, preprocessing, input_size, application)``.

    ``build(input_shape, weights)`` makes the feature extractor (``weights``: None, 'imagenet' or a path);
    ``preprocessing`` is a ``PREPROCESSING`` key; ``input_size`` the side the network resizes its 96 px
    input to by default; ``application`` the ``keras.applications`` class it wraps ('' when trained from
    scratch). A plain tuple underneath: this file imports nothing but numpy, tensorflow and keras.
    """

    __slots__ = ()

    def __new__(cls, build, preprocessing: str, input_size: int, application: str = ""):
        return super().__new__(cls, (build, preprocessing, input_size, application))

    build = property(lambda self: self[0])
    preprocessing = property(lambda self: self[1])
    input_size = property(lambda self: self[2])
    application = property(lambda self: self[3])


def _scratch(widths: tuple[int, ...], input_size: int, depths: tuple[int, ...] | None = None) -> Backbone:
    """A compact ResNet with these stage widths (and blocks per stage), trained from scratch on standardised
    pixels."""
    return Backbone(lambda input_shape, weights: _small_resnet(input_shape, widths, depths), "standardize",
                    input_size)


def _application(constructor: str, preprocessing: str = "raw") -> Backbone:
    """A ``keras.applications`` network without its top, at 96 px unless the spec says otherwise."""

    def build(input_shape, weights):
        return getattr(keras.applications, constructor)(include_top=False, weights=weights,
                                                        input_shape=input_shape, pooling=None)

    return Backbone(build, preprocessing, IMAGE_SHAPE[0], constructor)


# Every backbone bcsub can train and ship; adding one is one line here.
BACKBONES: dict[str, Backbone] = {
    "tinycnn": _scratch((8, 16, 32), 48),
    "resnet-small": _scratch((32, 64, 128, 256), 64),
    # Two blocks in each of the last two stages (about 2.7M weights): in the CPU recipe a third slower per epoch
    # than resnet-small, and worse within the same 30 minutes (README, Benchmarks).
    "resnet-small-deep": _scratch((32, 64, 128, 256), 64, depths=(1, 1, 2, 2)),
    "mobilenetv3small": _application("MobileNetV3Small"),
    "mobilenetv3large": _application("MobileNetV3Large"),
    "efficientnetb0": _application("EfficientNetB0"),
    "efficientnetv2b0": _application("EfficientNetV2B0"),
    "efficientnetv2s": _application("EfficientNetV2S"),
    "efficientnetv2m": _application("EfficientNetV2M"),
    "convnexttiny": _application("ConvNeXtTiny"),
    "convnextsmall": _application("ConvNeXtSmall"),
    "xception": _application("Xception", "tf"),
    "resnet50v2": _application("ResNet50V2", "tf"),
    "nasnetmobile": _application("NASNetMobile", "tf"),
}


def build_backbone(name: str, input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    """The feature extractor (no head) named ``backbone``; ``weights`` is None, 'imagenet' or a path."""
    model = BACKBONES[name].build(input_shape, weights)
    model.name = "backbone"
    return model


def network_input_size(spec: dict) -> int:
    """The side the backbone sees (the network resizes the 96 px input to it)."""
    return int(spec.get("image_size") or BACKBONES[spec["backbone"]].input_size)


def build_network(spec: dict, l2: float = 0.0, input_size: int | None = None) -> keras.Model:
    """Classifier taking raw 0..255 pixels (n, 96, 96, 3): resize, preprocess, backbone, head.

    The backbone is always built as ``weights=None`` builds it: training builds this same graph and copies
    pretrained weights into it (``train/backbones.py``), so the network that ships is the one that trained.
    ``input_size`` builds the same network (same weights, same order) for inputs that are already
    resized to that side: training uses it to augment small images instead of 96 px ones.
    """
    name = spec["backbone"]
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    preprocess = PREPROCESSING.get(spec.get("preprocessing") or BACKBONES[name].preprocessing)
    size = network_input_size(spec)
    side = int(input_size or IMAGE_SHAPE[0])
    inputs = keras.Input((side, side, 3), name="pixels")
    x = inputs
    if size != side:
        x = layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
    if preprocess is not None:
        x = preprocess()(x)
    x = build_backbone(name, (size, size, 3), None)(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(float(spec.get("dropout", 0.3)), name="dropout")(x)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    x = layers.Dense(int(spec.get("num_classes", NUM_CLASSES)), kernel_regularizer=regularizer,
                     name="logits")(x)
    if spec.get("logit_offsets"):
        x = LogitOffset(spec["logit_offsets"], name="prior")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"bcsub_{name.replace('-', '_')}")


def save_weights(model: keras.Model, path: str) -> None:
    """Save weights as a plain npz in ``get_weights()`` order (loads in any Keras 3 version)."""
    arrays = {f"w{i:04d}": np.asarray(w, dtype=np.float32) for i, w in enumerate(model.get_weights())}
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def iter_layers(model):
    """Every layer of ``model``, nested models' layers included (depth first)."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from iter_layers(layer)


def assign_weights(model: keras.Model, arrays: list) -> None:
    """``model.set_weights(arrays)``, then let preprocessing layers take their new state into use.

    A ``Normalization`` layer copies its mean and variance into constants in ``finalize_state()``, which
    Keras' file loaders call and ``set_weights`` does not: without it the layer keeps normalising with
    the values it was built with (zeros and ones), whatever the weights say.
    """
    model.set_weights(arrays)
    for layer in iter_layers(model):
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()


def load_weights(model: keras.Model, path: str) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = [data[f"w{i:04d}"] for i in range(len(data.files))]
    expected = len(model.get_weights())
    if len(arrays) != expected:
        raise ValueError(f"{path}: {len(arrays)} weight arrays, the network has {expected}")
    assign_weights(model, arrays)


def load_member(directory: str, entry: dict) -> keras.Model:
    model = build_network(entry["spec"])
    load_weights(model, os.path.join(directory, entry["weights"]))
    return model


# --------------------------------------------------------------------------- test-time augmentation


def _blur(x):
    kernel = tf.constant([1.0, 2.0, 1.0]) / 4.0
    kernel = tf.tile(tf.reshape(tf.tensordot(kernel, kernel, axes=0), (3, 3, 1, 1)), (1, 1, 3, 1))
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(padded, kernel, strides=(1, 1, 1, 1), padding="VALID")


def _contrast(x, factor: float):
    mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
    return tf.clip_by_value((x - mean) * factor + mean, 0.0, 255.0)


def _saturation(x, factor: float):
    gray = tf.reduce_mean(x, axis=-1, keepdims=True)
    return tf.clip_by_value((x - gray) * factor + gray, 0.0, 255.0)


class View:
    """A TTA view: ``transform`` maps a float32 batch (n, 96, 96, 3) of 0..255 pixels to another; ``group``
    names the candidate set of ``bcsub package --tta auto`` that tries it ("dihedral", "photometric"; ""
    for a view used only when named in ``--tta``)."""

    def __init__(self, transform, group: str = ""):
        self.transform, self.group = transform, group

    def __call__(self, x):
        return self.transform(x)


# Every TTA view the runtime knows; adding one is one line here.
VIEWS = {
    "identity": View(lambda x: x, "dihedral"),
    "rot90": View(lambda x: tf.image.rot90(x, 1), "dihedral"),
    "rot180": View(lambda x: tf.image.rot90(x, 2), "dihedral"),
    "rot270": View(lambda x: tf.image.rot90(x, 3), "dihedral"),
    "flip_lr": View(tf.image.flip_left_right, "dihedral"),
    "flip_ud": View(tf.image.flip_up_down, "dihedral"),
    "transpose": View(tf.image.transpose, "dihedral"),
    "transverse": View(lambda x: tf.image.rot90(tf.image.transpose(x), 2), "dihedral"),
    "bright_up": View(lambda x: tf.clip_by_value(x + 16.0, 0.0, 255.0), "photometric"),
    "bright_down": View(lambda x: tf.clip_by_value(x - 16.0, 0.0, 255.0), "photometric"),
    "contrast_up": View(lambda x: _contrast(x, 1.25)),
    "contrast_down": View(lambda x: _contrast(x, 0.8), "photometric"),
    "saturation_down": View(lambda x: _saturation(x, 0.7), "photometric"),
    "blur": View(_blur, "photometric"),
}


def views_in(group: str) -> tuple[str, ...]:
    """The names of the views of one ``View.group``, in ``VIEWS`` order."""
    return tuple(name for name, view in VIEWS.items() if view.group == group)


DIHEDRAL_VIEWS = views_in("dihedral")


def tta_views(views: list[str] | tuple[str, ...] | int) -> tuple[str, ...]:
    """Resolve a view list, or a count k (the first k dihedral views), to view names."""
    if isinstance(views, int):
        if not 1 <= views <= len(DIHEDRAL_VIEWS):
            raise ValueError(f"TTA view count {views} must be 1..{len(DIHEDRAL_VIEWS)}")
        return DIHEDRAL_VIEWS[:views]
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise ValueError(f"unknown TTA views {unknown}; known: {', '.join(VIEWS)}")
    return tuple(views)


def pixel_problem(X, side: int | None = IMAGE_SHAPE[0], uint8_only: bool = False,
                  check_values: bool = True) -> str | None:
    """Why ``X`` is not a batch of RGB images of 0..255 pixels, or None when it is.

    ``side``: the height and width required (None: any); ``uint8_only``: refuse other dtypes;
    ``check_values``: scan pixels that are not uint8 for NaN, inf and values outside 0..255 (training data
    must be clean; ``predict`` repairs such values instead, see ``as_image_batch``).
    """
    expected = "(n, H, W, 3)" if side is None else f"(N, {side}, {side}, 3)"
    if not isinstance(X, np.ndarray) or X.ndim != 4 or X.shape[-1] != 3 or (
            side is not None and X.shape[1:3] != (side, side)):
        return f"images have shape {getattr(X, 'shape', None)}, expected {expected} RGB"
    if X.dtype != np.uint8 and (uint8_only or X.dtype.kind not in "uifb"):
        return f"images have dtype {X.dtype}, expected uint8{'' if uint8_only else ' or float'} pixels 0..255"
    if check_values and X.dtype != np.uint8 and X.size and (
            not np.isfinite(X).all() or X.min() < 0 or X.max() > 255):
        return "pixel values must be finite numbers in 0..255 (got NaN, inf or out of range)"
    return None


def as_image_batch(X) -> np.ndarray:
    """``X`` as an (n, 96, 96, 3) array of numbers: also takes a list of images or one (96, 96, 3) image.
    Raises ValueError only for what is not 96x96 RGB images (a wrong size or a non-numeric dtype)."""
    try:
        X = np.asarray(X)
    except ValueError as err:  # a list of images of different shapes
        raise ValueError(f"images of different shapes ({err}); expected (N, 96, 96, 3) RGB") from None
    if X.shape == IMAGE_SHAPE:
        X = X[None]
    elif X.ndim == 1 and X.size == 0:  # an empty list
        X = X.reshape((0, *IMAGE_SHAPE))
    problem = pixel_problem(X, check_values=False)
    if problem:
        raise ValueError(problem)
    return X


def pixel_scale(X: np.ndarray, chunk: int = 1024) -> float:
    """255 when ``X`` holds floats whose finite values are all at most 1 (pixels given as 0..1), else 1.
    Scanned chunk by chunk, so memory stays flat."""
    if X.dtype.kind != "f":
        return 1.0
    top = -np.inf
    for start in range(0, len(X), chunk):
        part = X[start:start + chunk]
        finite = part[np.isfinite(part)]
        if finite.size:
            top = max(top, float(finite.max()))
    return 255.0 if -np.inf < top <= 1.0 else 1.0


def clean_pixels(chunk: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """A float32 copy of ``chunk`` with NaN and inf set to 0, multiplied by ``scale`` and clipped to 0..255."""
    x = chunk.astype(np.float32)
    if chunk.dtype == np.uint8:
        return x
    if chunk.dtype.kind == "f":
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if scale != 1.0:
        x *= scale
    return np.clip(x, 0.0, 255.0, out=x)


class ToneRepair:
    """Undo two tone operations of RandAugment/AugMix-style shifts before the network sees an image.

    - Solarisation (every value at or above a threshold t becomes 255 - v) leaves no value at or above t
      where a cell image, whose background is near white, has values right up to 255: the threshold is
      the image's largest value + 1. Flipping back every value at most 255 - t restores the bright
      pixels exactly (an originally dark value there is flipped too: left for the network). Only where
      the background came out dark: at least ``DARK_BORDER`` of the values in the image's outer
      ``BORDER`` pixels are at most 255 - t, and, for a threshold under ``MILD``, the border is darker
      than the image as a whole (a darkened image also lacks 255, but its border stays its palest part;
      halved, all its values are at most 255 - t). Does nothing to an image whose largest value is 255
      (98% of PBC images) or less than ``SOLARIZED_MAX`` (a threshold that low cannot be told from its
      mirror image).
    - Histogram equalisation makes each channel's histogram flat, which no cell image's is (the
      background fills the top of the range): where all three channels spread evenly over the four
      quarters of 0..255 (within ``FLAT``, see ``flatness``), each channel is matched back to the
      histogram of clean images: each value goes to the ``reference`` quantile (3, Q) at its rank in the
      channel (equalisation sent it to 255 x that rank; by ranks, a partial equalisation is undone too).

    Works per image on a chunk (memory flat in n); ``bcsub package --tta auto`` ships it only where it
    raises the shifted validation accuracy at little clean cost (``tools.tta_select``).
    """

    SOLARIZED_MAX = 127.0
    BORDER = 8
    DARK_BORDER = 0.05  # of the border values: 99% of suite-solarised PBC images, 2% of darkened ones
    MILD = 192.0
    FLAT = 0.2

    def __init__(self, reference):
        self.reference = np.asarray(reference, np.float32)
        self.ranks = np.linspace(0.0, 1.0, self.reference.shape[1], dtype=np.float32)

    @classmethod
    def from_images(cls, images: np.ndarray, quantiles: int = 257) -> ToneRepair:
        """The reference quantiles of each channel over clean ``images`` (n, H, W, 3)."""
        ranks = np.linspace(0.0, 1.0, quantiles)
        pixels = np.asarray(images).reshape(-1, 3)
        return cls(np.stack([np.quantile(pixels[:, c], ranks) for c in range(3)]))

    def to_json(self) -> dict:
        return {"reference": np.round(self.reference, 3).tolist()}

    @staticmethod
    def flatness(x: np.ndarray) -> np.ndarray:
        """Per image: the largest gap, over channels and quarters of 0..255, between the share of pixels
        in that quarter and 1/4 (0: perfectly flat histograms), counting values of 255 or not, whichever
        is flatter (PIL's equalisation leaves the top level where it was; others send it to 255). A cell
        image scores at least 0.25 either way (its blue channel never reaches the lowest quarter); 99% of
        PBC images equalised by PIL or by the shift suite score under 0.17."""
        pixels = x.reshape(len(x), -1, 3)
        quarter = np.clip(pixels // 64, 0, 3)
        gaps = []
        for counted in (np.ones(pixels.shape, bool), pixels < 255.0):
            shares = np.stack([((quarter == k) & counted).sum(axis=1) for k in range(4)], axis=1)
            gaps.append(np.abs(shares / np.maximum(counted.sum(axis=1), 1)[:, None] - 0.25).max(axis=(1, 2)))
        return np.minimum(*gaps)

    def solarized(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per image of a float32 chunk (n, H, W, 3): is it taken for solarised, and which values would be
        flipped back (those at most 255 - t, t = its largest value + 1)."""
        top = x.reshape(len(x), -1).max(axis=1)
        flipped = x <= (254.0 - np.floor(top))[:, None, None, None]
        ring = np.ones(x.shape[1:3], bool)
        ring[self.BORDER:-self.BORDER, self.BORDER:-self.BORDER] = False
        dark_border = flipped[:, ring].reshape(len(x), -1).mean(axis=1) >= self.DARK_BORDER
        darker_border = x[:, ring].reshape(len(x), -1).mean(axis=1) < x.reshape(len(x), -1).mean(axis=1)
        mild = top >= self.MILD - 1
        return (top < 255.0) & (top >= self.SOLARIZED_MAX) & dark_border & (mild | darker_border), flipped

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The repaired copy of a float32 chunk (n, H, W, 3) of 0..255 pixels (``x`` is left as it was)."""
        if not len(x):
            return x
        solarized, flipped = self.solarized(x)
        out = np.where(solarized[:, None, None, None] & flipped, 255.0 - x, x).astype(np.float32)
        for i in np.flatnonzero(self.flatness(out) < self.FLAT):
            for c in range(3):
                values = out[i, ..., c]
                ordered = np.sort(values, axis=None)
                rank = (np.searchsorted(ordered, values, "left") + np.searchsorted(ordered, values, "right")) / 2
                out[i, ..., c] = np.interp(rank / values.size, self.ranks, self.reference[c])
        return out


class ErasedBoxFill:
    """Fill an erased rectangle (cutout / random erasing: one box of a single grey) with the mean colour of
    the pixels around it, so the network sees a cell with a blurred-out patch rather than a block of paint.

    A box is taken for erased when it is the bounding box of the image's most common grey (R = G = B) value,
    at least ``FULL`` of it has that exact value, its sides are between ``MIN_SIDE`` pixels and ``MAX_SHARE``
    of the image's, and the grey is not 255 (a blown-out background is exact white, and spans the image).
    No clean PBC validation image has such a box; a heavy JPEG's flat background block can pass for one (4 of
    800 test images at jpeg@3 and @5) and moves by a few grey levels.
    """

    MIN_SIDE = 8
    MAX_SHARE = 0.75
    FULL = 0.98
    RING = 2  # width, in pixels, of the frame around the box whose mean fills it

    @staticmethod
    def grey(x: np.ndarray) -> np.ndarray:
        """Where R = G = B, for images (..., H, W, 3)."""
        return (x[..., 0] == x[..., 1]) & (x[..., 1] == x[..., 2])

    @classmethod
    def box(cls, image: np.ndarray, grey: np.ndarray | None = None) -> tuple[int, int, int, int] | None:
        """(y0, y1, x0, x1) of the erased box of one float32 (H, W, 3) image (``grey``: its ``grey`` mask,
        when already known), or None."""
        h, w, _ = image.shape
        grey = cls.grey(image) if grey is None else grey
        if grey.sum() < cls.MIN_SIDE**2:
            return None
        values, counts = np.unique(image[..., 0][grey], return_counts=True)
        value = values[counts.argmax()]
        if value >= 255.0:
            return None
        mask = grey & (image[..., 0] == value)
        rows, cols = mask.sum(axis=1), mask.sum(axis=0)
        ys, xs = np.flatnonzero(rows >= 0.9 * rows.max()), np.flatnonzero(cols >= 0.9 * cols.max())
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        sides_ok = cls.MIN_SIDE <= y1 - y0 <= cls.MAX_SHARE * h and cls.MIN_SIDE <= x1 - x0 <= cls.MAX_SHARE * w
        return (y0, y1, x0, x1) if sides_ok and mask[y0:y1, x0:x1].mean() >= cls.FULL else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The filled copy of a float32 chunk (n, H, W, 3) of 0..255 pixels (``x`` is left as it was)."""
        out = x.copy()
        grey = self.grey(x)
        for i in np.flatnonzero(grey.reshape(len(x), -1).sum(axis=1) >= self.MIN_SIDE**2):
            box = self.box(x[i], grey[i])
            if box is None:
                continue
            y0, y1, x0, x1 = box
            fy, fx = max(y0 - self.RING, 0), max(x0 - self.RING, 0)
            frame = out[i, fy:y1 + self.RING, fx:x1 + self.RING]
            around = np.ones(frame.shape[:2], bool)
            around[y0 - fy:y1 - fy, x0 - fx:x1 - fx] = False
            out[i, y0:y1, x0:x1] = frame[around].mean(axis=0)
        return out


class ImageRepair:
    """What the zip undoes before the networks see a chunk: an erased box filled (``ErasedBoxFill``, when
    ``fill_erased``), then solarisation and equalisation undone (``ToneRepair``). Clean images pass as they
    are. The manifest's ``tta.repair`` holds ``to_json()``."""

    def __init__(self, reference, fill_erased: bool = False):  # False: what manifests before the fill meant
        self.tone = ToneRepair(reference)
        self.fill = ErasedBoxFill() if fill_erased else None

    @classmethod
    def from_images(cls, images: np.ndarray, fill_erased: bool = True) -> ImageRepair:
        """The repair whose tone reference is taken from clean ``images`` (n, H, W, 3)."""
        return cls(ToneRepair.from_images(images).reference, fill_erased)

    def to_json(self) -> dict:
        return {**self.tone.to_json(), "fill_erased": self.fill is not None}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The repaired copy of a float32 chunk (n, H, W, 3) of 0..255 pixels (``x`` is left as it was)."""
        return self.tone(self.fill(x) if self.fill else x)


def stage_features(model) -> keras.Model:
    """(n, 96, 96, 3) pixels -> (n, F): the mean and standard deviation over the image of every channel of the
    last feature map of each resolution stage of ``model``'s backbone (the layers before it run first)."""
    names = [layer.name for layer in model.layers]
    backbone = model.get_layer("backbone")
    last_at_side = {}  # side -> the last 4-D output of that side (in layer order)
    for layer in backbone.layers[1:]:
        if len(layer.output.shape) == 4:
            last_at_side[layer.output.shape[1]] = layer.output
    stages = list(last_at_side.values())
    taps = keras.Model(backbone.inputs, stages)
    x = keras.Input(IMAGE_SHAPE)
    h = x
    for layer in model.layers[1:names.index("backbone")]:  # resize / preprocessing, called anew (not their outputs)
        h = layer(h)
    maps = taps(h)
    pooled = [keras.ops.concatenate([keras.ops.mean(m, axis=(1, 2)), keras.ops.std(m, axis=(1, 2))], axis=-1)
              for m in (maps if isinstance(maps, (list, tuple)) else [maps])]
    return keras.Model(x, keras.ops.concatenate(pooled, axis=-1) if len(pooled) > 1 else pooled[0])


def rescale_about_centre(x, log_zoom):
    """Each image of a float32 batch (n, H, W, 3) magnified by exp(-log_zoom) about its centre (bilinear,
    reflected at the border): it undoes a zoom by exp(log_zoom); 0 leaves an image exactly as it was."""
    z = tf.exp(tf.cast(log_zoom, tf.float32))
    centre = (tf.cast(tf.shape(x)[1], tf.float32) - 1.0) / 2.0  # square images
    zero = tf.zeros_like(z)
    transforms = tf.stack([z, zero, centre * (1.0 - z), zero, z, centre * (1.0 - z), zero, zero], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transforms, output_shape=tf.shape(x)[1:3],
                                                 fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")


class ZoomUndo:
    """Undo the zoom of a magnified or shrunk image before the networks see it.

    A cell's size in the picture is part of what tells the classes apart (a platelet is small, a monocyte
    large), so a zoomed test image misleads the networks. A linear regressor (``coef``, ``intercept``, fitted
    by ``bcsub package`` on training images that it zoomed and augmented) reads the log zoom off the
    backbone's stage statistics (``stage_features`` of one member); an image whose estimate is beyond
    ``threshold`` is rescaled about its centre to undo it (``rescale_about_centre``); the rest pass as they
    are. Runs chunk by chunk, after ``ImageRepair``. ``model`` should be a copy of the member that no
    BatchNorm adaptation touches (``load_ensemble`` loads one).
    """

    THRESHOLD = 0.2  # in log zoom: chosen on pbc96_val (see bench/results/zoom_undo_val.json)

    def __init__(self, model, coef, intercept: float, threshold: float = THRESHOLD):
        self.coef = np.asarray(coef, np.float32)
        self.intercept, self.threshold = float(intercept), float(threshold)
        features = stage_features(model)
        signature = [tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32)]
        self._features = tf.function(lambda x: features(x, training=False), input_signature=signature,
                                     reduce_retracing=True)

    def to_json(self) -> dict:
        return {"coef": np.round(self.coef, 6).tolist(), "intercept": round(self.intercept, 6),
                "threshold": self.threshold}

    def features(self, x: np.ndarray) -> np.ndarray:
        return self._features(tf.constant(x, tf.float32)).numpy()

    def estimate(self, x: np.ndarray) -> np.ndarray:
        """The estimated log zoom of each image of a float32 chunk (n, H, W, 3) of 0..255 pixels."""
        return self.features(x) @ self.coef + self.intercept if len(x) else np.zeros(0, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The copy of a float32 chunk with the zoom undone where the estimate is beyond the threshold."""
        out = np.array(x, np.float32)
        estimate = self.estimate(out)
        moved = np.flatnonzero(np.abs(estimate) > self.threshold)
        if len(moved):
            out[moved] = rescale_about_centre(tf.constant(out[moved]), estimate[moved]).numpy()
        return out


class Preparation:
    """What happens to each chunk before the views: ``ImageRepair``, then ``ZoomUndo`` (each when on)."""

    def __init__(self, repair: ImageRepair | None = None, zoom: ZoomUndo | None = None):
        self.steps = [step for step in (repair, zoom) if step is not None]

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for step in self.steps:
            x = step(x)
        return x


def network_input(chunk: np.ndarray, scale: float = 1.0, repair=None) -> np.ndarray:
    """What the networks get of a chunk of ``X``: ``clean_pixels``, then ``repair`` (an ``ImageRepair`` or a
    ``Preparation``) when given."""
    pixels = clean_pixels(chunk, scale)
    return repair(pixels) if repair else pixels


class BatchNormAdaptation:
    """Test-time adaptation of one network: every BatchNormalization layer of its backbone gets its
    statistics re-estimated on the images it is about to predict, blended with the training statistics.

    One chunked pass, as "precise BN" does: the network runs as in training (each BatchNorm normalises a
    chunk by that chunk's own statistics, dropout off), and each layer's input is summed over all chunks,
    so every layer is measured on what the layers before it pass on once they are adapted too. (Measuring
    through the training statistics instead, even twice, is far off: it took a CPU-preset network from
    0.985 to 0.52 on clean validation images.) The blend weight of the test statistics is n / (n + prior):
    ``prior`` is how many images the training statistics count for. ``restore`` puts the training
    statistics back, so the network (and its files) are left as they were.
    """

    def __init__(self, model, prior: float, chunk_size: int = 64):
        self.prior, self.chunk_size = float(prior), int(chunk_size)
        names = [layer.name for layer in model.layers]
        backbone = model.get_layer("backbone") if "backbone" in names else None
        inner = backbone.layers if backbone is not None else []
        self.layers = [layer for layer in inner if isinstance(layer, layers.BatchNormalization)]
        self.saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in self.layers]
        if not self.layers:
            return
        front = model.layers[1:names.index("backbone")]  # resize / preprocessing before the backbone
        taps = keras.Model(backbone.inputs, [layer.input for layer in self.layers])
        dropouts = [layer for layer in inner if isinstance(layer, layers.Dropout)]
        for layer in self.layers:  # Keras runs a frozen BatchNorm in inference mode even when training
            layer.trainable = True

        def moments(x):
            for layer in front:
                x = layer(x)
            rates = [layer.rate for layer in dropouts]
            for layer in dropouts:  # traced once: the graph has no dropout, the layers keep their rates
                layer.rate = 0.0
            outputs = taps(x, training=True)
            for layer, rate in zip(dropouts, rates):
                layer.rate = rate
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            return [(tf.reduce_sum(tf.cast(t, tf.float64), axis=[0, 1, 2]),
                     tf.reduce_sum(tf.square(tf.cast(t, tf.float64)), axis=[0, 1, 2]),
                     tf.cast(tf.reduce_prod(tf.shape(t)[:3]), tf.float64)) for t in outputs]

        signature = [tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32)]
        self._moments = tf.function(moments, input_signature=signature, reduce_retracing=True)

    def _measure(self, X, scale: float, repair=None) -> list[tuple[np.ndarray, np.ndarray]]:
        totals = None
        for start in range(0, len(X), self.chunk_size):
            chunk = tf.constant(network_input(X[start:start + self.chunk_size], scale, repair))
            sums = [tuple(v.numpy() for v in m) for m in self._moments(chunk)]
            totals = sums if totals is None else [tuple(a + b for a, b in zip(t, s)) for t, s in zip(totals, sums)]
        return [(s1 / n, np.maximum(s2 / n - (s1 / n) ** 2, 0.0)) for s1, s2, n in totals]

    def _blend(self, measured, weight: float) -> None:
        for layer, (mean0, var0), (mean1, var1) in zip(self.layers, self.saved, measured):
            mean = (1 - weight) * mean0 + weight * mean1
            second = (1 - weight) * (var0 + mean0 ** 2) + weight * (var1 + mean1 ** 2)
            layer.moving_mean.assign(mean.astype(np.float32))
            layer.moving_variance.assign(np.maximum(second - mean ** 2, 0.0).astype(np.float32))

    def adapt(self, X, scale: float = 1.0, repair=None) -> None:
        """Adapt to the (n, 96, 96, 3) images ``X`` (from the training statistics, whatever came before);
        ``scale``: see ``clean_pixels``; ``repair``: applied to each chunk first, as the ensemble does."""
        self.restore()
        if not self.layers or not len(X):
            return
        measured = self._measure(X, scale, repair)  # (running as in training also moves the moving statistics)
        self._blend(measured, len(X) / (len(X) + self.prior))

    def restore(self) -> None:
        for layer, (mean, var) in zip(self.layers, self.saved):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(var)


class TTAEnsemble:
    """Softmax average over ensemble members and TTA views, run chunk by chunk.

    Each chunk of images is expanded to all its views and sent through every member in one batched
    call, so memory stays flat whatever n is, and no image is ever predicted on its own.
    """

    def __init__(self, models: list, member_weights: list[float] | None = None,
                 views: list[str] | tuple[str, ...] | int = ("identity",),
                 batch_size: int = DEFAULT_BATCH_SIZE, adapt_bn: float | None = None,
                 repair: ImageRepair | None = None, zoom: ZoomUndo | None = None):
        self.models = list(models)
        # repair, zoom: None = off, else applied to every chunk before the views (and the adaptation)
        self.repair, self.zoom = repair, zoom
        self.prepare = Preparation(repair, zoom) or None
        # adapt_bn: None = off, else the prior (in images) of BatchNormAdaptation, applied per predict call
        self.adaptations = [BatchNormAdaptation(m, adapt_bn) for m in self.models] if adapt_bn else []
        self.adapt_bn = adapt_bn
        weights = np.asarray(member_weights or [1.0] * len(self.models), dtype=np.float32)
        if len(weights) != len(self.models) or weights.sum() <= 0 or (weights < 0).any():
            raise ValueError("member weights must be non-negative, one per member, not all zero")
        self.member_weights = weights / weights.sum()
        self.views = tta_views(views)
        self.chunk_size = max(1, int(batch_size) // len(self.views))
        self._noted_unit_scale = False
        signature = [tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32)]
        self._views_chunk = tf.function(self._chunk_view_probabilities, input_signature=signature,
                                        reduce_retracing=True)
        self._average_chunk = tf.function(self._chunk_probabilities, input_signature=signature,
                                          reduce_retracing=True)

    def _chunk_view_probabilities(self, x):
        """Softmax of every member on every view of a chunk: (members, views, n, classes)."""
        n = tf.shape(x)[0]
        batch = tf.concat([VIEWS[v](x) for v in self.views], axis=0)
        return tf.stack([
            tf.reshape(tf.cast(model(batch, training=False), tf.float32), (len(self.views), n, NUM_CLASSES))
            for model in self.models
        ])

    def _chunk_probabilities(self, x):
        weights = tf.constant(self.member_weights / len(self.views))
        return tf.einsum("m,mvnc->nc", weights, self._chunk_view_probabilities(x))

    def _pixel_scale(self, X: np.ndarray) -> float:
        """``pixel_scale`` of ``X``, noted once on stderr when the floats are taken as 0..1 pixels."""
        scale = pixel_scale(X)
        if scale != 1.0 and not self._noted_unit_scale:
            self._noted_unit_scale = True
            print("bcsub model.py: float images with no value above 1: read as 0..1 pixels, scaled by 255",
                  file=sys.stderr)
        return scale

    def _chunks(self, X: np.ndarray, scale: float):
        """Float32 chunks of 0..255 pixels (see ``clean_pixels``), repaired and zoom-undone when those are on."""
        for start in range(0, len(X), self.chunk_size):
            yield start, tf.constant(network_input(X[start:start + self.chunk_size], scale, self.prepare))

    def _adapted(self, X, fill) -> np.ndarray:
        """``fill(X, scale)`` run on ``X`` as a batch (see ``as_image_batch``) with every member adapted to it
        (when adaptation is on), then restored."""
        X = as_image_batch(X)
        scale = self._pixel_scale(X)
        for adaptation in self.adaptations:
            adaptation.adapt(X, scale, self.prepare)
        try:
            return fill(X, scale)
        finally:
            for adaptation in self.adaptations:
                adaptation.restore()

    def predict_proba(self, X) -> np.ndarray:
        """Ensemble- and view-averaged softmax (n, classes). ``X``: see ``as_image_batch``."""
        def fill(X, scale):
            out = np.zeros((len(X), NUM_CLASSES), np.float32)
            for start, chunk in self._chunks(X, scale):
                out[start:start + len(chunk)] = self._average_chunk(chunk).numpy()
            return out
        return self._adapted(X, fill)

    def view_probabilities(self, X) -> np.ndarray:
        """Softmax per member and view, not averaged: (members, views, n, classes)."""
        def fill(X, scale):
            out = np.zeros((len(self.models), len(self.views), len(X), NUM_CLASSES), np.float32)
            for start, chunk in self._chunks(X, scale):
                out[:, :, start:start + len(chunk)] = self._views_chunk(chunk).numpy()
            return out
        return self._adapted(X, fill)

    def predict(self, X) -> np.ndarray:
        return np.argmax(self.predict_proba(X), axis=1).astype(np.int64)


def load_ensemble(directory: str) -> TTAEnsemble:
    """Load the members and TTA settings described by ``bcsub_submission.json`` in ``directory``."""
    with open(os.path.join(directory, MANIFEST_NAME)) as handle:
        manifest = json.load(handle)
    members, zoom = manifest["members"], manifest["tta"].get("zoom")
    return TTAEnsemble(
        [load_member(directory, entry) for entry in members],
        [float(entry.get("weight", 1.0)) for entry in members],
        manifest["tta"]["views"],
        int(manifest.get("batch_size", DEFAULT_BATCH_SIZE)),
        manifest["tta"].get("adapt_bn"),
        ImageRepair(**manifest["tta"]["repair"]) if manifest["tta"].get("repair") else None,
        ZoomUndo(load_member(directory, members[0]), **zoom) if zoom else None,  # its own copy: never adapted
    )


class Model:
    """CodaBench entry point: ``Model().predict(X)`` -> int labels (n,) in 0..7.

    ``X``: (n, 96, 96, 3) pixels 0..255 (uint8, integers or floats), a list of such images, or one image.
    Never fails on values: NaN and inf count as 0, values outside 0..255 are clipped, and floats that
    are all at most 1 are taken as 0..1 pixels (a note on stderr). Only a wrong image size is an error.
    """

    def __init__(self):
        self.ensemble = load_ensemble(os.path.dirname(os.path.abspath(__file__)))

    def predict(self, X) -> np.ndarray:
        return self.ensemble.predict(X)

    def predict_proba(self, X) -> np.ndarray:
        return self.ensemble.predict_proba(X)
