"""Typed exceptions of the model library.

``mmoe_model`` never imports ``jobs``; the CLI maps :class:`MmoeModelError` (the base of every
exception here) to a one-line error and an exit code. Every message is a single line that names
what was wrong.
"""

from __future__ import annotations


class MmoeModelError(Exception):
    """Base class of the model library's errors."""


class ModelConfigError(MmoeModelError, ValueError):
    """A model or training configuration is invalid (unknown arch, bad sizes, bad gate prior)."""


class ModelInputError(MmoeModelError, ValueError):
    """Tensors or frames handed to the model do not match its input layout."""


class TrainingError(MmoeModelError):
    """Training cannot run on the data it was given (no rows, missing label columns, ...)."""


class CheckpointMismatch(TrainingError):
    """A training checkpoint is unreadable or was written by a run of other settings or data."""


class ArtifactError(MmoeModelError):
    """A model artifact directory is missing, incomplete or unreadable."""


class ArtifactTampered(ArtifactError):
    """A file of an artifact does not match the SHA-256 recorded in its MANIFEST.json."""


class SpecMismatch(ArtifactError):
    """The data's dataset spec differs from the spec the model was trained on."""


class GraphRefused(ArtifactError):
    """An ONNX graph offered for import does not fit the contract (not ONNX, an input that is no
    spec feature, a wrong dtype, a missing task, an opset or operator domain onnxruntime must not
    or cannot run, external data)."""


class ExportRefused(ArtifactError):
    """A model cannot be written as an ONNX graph (e.g. a feature encoding ONNX cannot express)."""
