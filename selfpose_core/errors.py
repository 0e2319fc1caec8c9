"""The error hierarchy of selfpose. CLIs turn a `SelfposeError` into one line on stderr and exit code 2."""
from __future__ import annotations


class SelfposeError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback."""


class ConfigError(SelfposeError):
    """A configuration file or option is wrong (the message names the file and key)."""


class CalibrationError(SelfposeError):
    """Camera intrinsics are invalid (zero/negative/NaN focal length, size mismatch)."""


class MeshError(SelfposeError):
    """A mesh cannot be loaded or is unusable (empty, degenerate, wrong units)."""


class RecordingError(SelfposeError):
    """A rosbag2 recording is missing, corrupt, truncated or lacks a topic/field/transform."""


class BagWriteError(RecordingError):
    """Writing a bag failed (a full disk, a read-only file system, ...): the message says how much of it is kept and
    how to get it back; the writer writes nothing more."""


class EncodingError(RecordingError):
    """An image message uses an encoding selfpose does not support."""


class DatasetError(SelfposeError):
    """A BOP-format dataset is missing files or holds inconsistent data."""


class ModelError(SelfposeError):
    """A model bundle is missing, incompatible or its weights cannot be loaded safely."""


class ShapeError(SelfposeError, ValueError):
    """An array/tensor argument has the wrong shape (the message names the argument and both shapes)."""


class OutputError(SelfposeError):
    """An output cannot be written as asked: it would overwrite an input or an existing result without
    ``--overwrite``, another run holds its lock, or the path is not writable (the message names path and flag)."""


class ResumeError(ModelError):
    """A file an interrupted run left to resume from (checkpoint.pt, state.yaml, pseudo labels) is empty, corrupt,
    refused (a pickle that would run code) or does not fit the run (the message names the file and the key)."""
