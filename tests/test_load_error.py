"""The cause of a submission's traceback in one line, and the fix when the server's Keras cannot load it."""

from __future__ import annotations

from tools.load_error import summarise_error

# Shortened from a real `keras.models.load_model` under keras 3.4.1 of a .keras saved by a newer Keras.
CHAINED = """Traceback (most recent call last):
  File "/env/keras/src/ops/operation.py", line 234, in from_config
    return cls(**config)
           ^^^^^^^^^^^^^
  File "/env/keras/src/layers/layer.py", line 266, in __init__
    raise ValueError(
ValueError: Unrecognized keyword arguments passed to RandomFlip: {'data_format': 'channels_last'}

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/env/keras/src/saving/serialization_lib.py", line 718, in deserialize_keras_object
    instance = cls.from_config(inner_config)
TypeError: Error when deserializing class 'RandomFlip' using config={'name': 'random_flip', 'mode': 'horizontal'}.

Exception encountered: Unrecognized keyword arguments passed to RandomFlip: {'data_format': 'channels_last'}

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/job/ingest_worker.py", line 75, in main
    model = Model()
TypeError: <class 'keras.src.models.sequential.Sequential'> could not be deserialized properly.

config={'module': 'keras', 'class_name': 'Sequential'}.
"""

INITIALIZER = """Traceback (most recent call last):
  File "/env/keras/src/initializers/initializer.py", line 81, in from_config
    return cls(**config)
TypeError: GlorotUniform.__init__() got an unexpected keyword argument 'input_axes'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/env/keras/src/ops/operation.py", line 236, in from_config
    raise TypeError(
TypeError: Error when deserializing class 'Conv2D' using config={'name': 'conv2d'}.
"""


def test_the_cause_is_the_first_exception_of_the_chain_with_layer_and_argument():
    summary = summarise_error(CHAINED)
    assert summary.cause == ("ValueError: Unrecognized keyword arguments passed to RandomFlip: "
                             "{'data_format': 'channels_last'}")
    assert summary.layer == "RandomFlip" and summary.arguments == ("data_format",)
    fix = summary.server_fix("3.4.1")
    assert fix.startswith("RandomFlip has no argument 'data_format' in Keras 3.4.1: re-save the model under Keras 3.4")
    assert "load plain weights" in fix and "\n" not in fix


def test_unexpected_argument_of_a_component_names_its_layer():
    summary = summarise_error(INITIALIZER)
    assert summary.cause.startswith("TypeError: GlorotUniform.__init__() got an unexpected keyword argument")
    assert summary.layer == "GlorotUniform in Conv2D" and summary.arguments == ("input_axes",)


def test_unknown_class_and_plain_errors():
    unknown = summarise_error("Traceback (most recent call last):\n  File \"x\", line 1\n"
                              "TypeError: Could not locate class 'RandomErasing'. Make sure custom classes ...\n")
    assert unknown.layer == "RandomErasing" and "has no RandomErasing" in unknown.server_fix("3.4.1")
    missing = summarise_error("Traceback (most recent call last):\n  File \"model.py\", line 9, in __init__\n"
                              "    self.net = load_model('weights.keras')\n"
                              "ValueError: File not found: filepath=weights.keras. Please ensure ...\n")
    assert missing.cause == "ValueError: File not found: filepath=weights.keras. Please ensure ..."
    assert missing.layer is None and "work under Keras 3.4.1" in missing.server_fix("3.4.1")
    assert summarise_error("the process died (exit code 9)").cause == "the process died (exit code 9)"
