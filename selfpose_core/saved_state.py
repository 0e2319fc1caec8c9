"""Reading the files an interrupted run left to resume from: arrays (``.npz``) and YAML state, checked on load.

Every problem is one :class:`~selfpose_core.errors.ResumeError` line naming the file and the key, with the hint
to delete the file (the stage that wrote it then runs again) or to start without ``--resume``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from selfpose_core.config_io import load_yaml, one_line
from selfpose_core.errors import ResumeError

MAX_NPZ_BYTES = 4 << 30  # a saved-array file larger than this is refused (4 GiB)
HINT = "delete it to redo that step, or start again without --resume"

# array kinds: "f" float, "i" signed/unsigned integer, "b" bool, "U" text
_KINDS = {"f": "f", "i": "iu", "b": "b", "U": "U", "u8": "u"}


def load_npz(path: str | Path, what: str, arrays: dict[str, tuple[str, int]]) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file ``path`` (``what`` names it in errors), checked against ``arrays``.

    Args:
        arrays: name -> (kind, ndim): kind ``"f"`` (float), ``"i"`` (integer), ``"u8"`` (unsigned integer),
            ``"b"`` (bool) or ``"U"`` (text); every listed array must be present with that kind and number of
            dimensions. Floats may hold NaN (callers check finiteness where it matters).

    Raises:
        ResumeError naming the file (and the array): missing, empty, too large, not an npz archive, a pickled
        object array (never unpickled), a missing array, a wrong kind or dimension.
    """
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"{what} {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ResumeError(f"{what} {path} is empty (interrupted while written?); {HINT}")
    if size > MAX_NPZ_BYTES:
        raise ResumeError(f"{what} {path}: {size} bytes, more than the {MAX_NPZ_BYTES} selfpose reads; {HINT}")
    out: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ResumeError(f"{what} {path} is a single array, not an .npz archive; {HINT}")
            for name, (kind, ndim) in arrays.items():
                if name not in z.files:
                    raise ResumeError(f"{what} {path}: array '{name}' is missing; {HINT}")
                a = z[name]
                if a.dtype.kind not in _KINDS[kind] or a.ndim != ndim:
                    raise ResumeError(f"{what} {path}: array '{name}' must be {ndim}-D of kind {kind}, got "
                                      f"{a.ndim}-D {a.dtype}; {HINT}")
                out[name] = a
    except ResumeError:
        raise
    except Exception as exc:  # zipfile, zlib, numpy's format parser: many kinds for corrupt bytes
        raise ResumeError(f"{what} {path} cannot be read ({type(exc).__name__}: {one_line(str(exc), 120)}); "
                          f"{HINT}") from None
    return out


def load_state_yaml(path: str | Path, what: str) -> Any:
    """The value of the YAML state file ``path`` (limits of :func:`~selfpose_core.config_io.load_yaml`), as
    a ResumeError naming the file when it cannot be read."""
    return load_yaml(path, what, ResumeError)


def fail(path: str | Path, what: str, key: str, problem: str) -> ResumeError:
    """The ResumeError for ``key`` of ``what`` ``path``: one line with the hint."""
    return ResumeError(f"{what} {path}: {key} {problem}; {HINT}")
