"""What a submission's traceback says, in one line, and the one-line fix when the server's Keras cannot load it.

Keras reports a layer it cannot rebuild as a chain of exceptions whose last one names only the outer
model; the cause is the first exception of the chain (e.g. ``ValueError: Unrecognized keyword arguments
passed to RandomFlip: {'data_format': 'channels_last'}``). That line, verbatim, is what the user must fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHAIN_SEPARATORS = ("During handling of the above exception, another exception occurred:",
                    "The above exception was the direct cause of the following exception:")
UNRECOGNIZED = re.compile(r"Unrecognized keyword arguments? passed to (\w+): (\{[^\n]*\})")
UNEXPECTED = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")
DESERIALIZING = re.compile(r"Error when deserializing class '(\w+)'")
UNKNOWN_CLASS = re.compile(r"Could not locate class '(\w+)'")
SERVER_FIX = ("re-save the model under Keras 3.4 (tensorflow 2.17), or rebuild the network in code in model.py and "
              "load plain weights (load_weights), as bcsub's own runtime does")


@dataclass(frozen=True)
class ErrorSummary:
    """``cause``: the first line of the chain's first exception; ``layer``/``arguments``: what Keras could
    not rebuild, when it says so (``layer`` may read 'GlorotUniform in Conv2D')."""

    cause: str
    layer: str | None = None
    arguments: tuple[str, ...] = ()

    def server_fix(self, keras_version: str | None) -> str:
        """The one-line fix for a submission that fails under the server's versions."""
        where = f"Keras {keras_version}" if keras_version else "the server's Keras"
        if self.layer and self.arguments:
            args = ", ".join(f"'{a}'" for a in self.arguments)
            return f"{self.layer} has no argument {args} in {where}: {SERVER_FIX}"
        if self.layer:
            return f"{where} has no {self.layer}: {SERVER_FIX}"
        return f"make model.py and its files work under {where}: {SERVER_FIX}"


def _exception_line(block: str) -> str:
    """The first line of the exception a traceback block ends with (frames are indented, it is not)."""
    lines = block.strip("\n").splitlines()
    header = max((i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")),
                 default=-1)
    for line in lines[header + 1:]:
        if line.strip() and not line[0].isspace():
            return line.strip()
    return next((line.strip() for line in lines if line.strip()), "")


def summarise_error(text: str) -> ErrorSummary:
    """The cause of a (possibly chained) traceback and, for a Keras loading error, the layer and arguments."""
    first = text
    for separator in CHAIN_SEPARATORS:
        first = first.split(separator)[0]
    cause = _exception_line(first)
    if match := UNRECOGNIZED.search(text):
        return ErrorSummary(cause, match.group(1), tuple(re.findall(r"'(\w+)'\s*:", match.group(2))))
    if match := UNEXPECTED.search(text):
        owner = DESERIALIZING.search(text)
        layer = match.group(1) if not owner or owner.group(1) == match.group(1) else \
            f"{match.group(1)} in {owner.group(1)}"
        return ErrorSummary(cause, layer, (match.group(2),))
    if match := UNKNOWN_CLASS.search(text):
        return ErrorSummary(cause, match.group(1))
    return ErrorSummary(cause)
