"""Output directories of the commands that write models (`selfpose pretrain`, `selfpose adapt`): never overwritten
silently, never written by two runs at once.

- `check_model_output`: refuses an ``--out`` that is the input model (or lies inside it), and one that already
  holds a model bundle (or a training checkpoint) unless ``--overwrite`` (or ``--resume`` where the command has it).
- `OutputLock`: an exclusive lock on the directory, the file ``OUT/.selfpose.lock`` holding the running pid and
  locked with ``flock`` (so the lock dies with its process, even after kill -9). A second run into the same directory
  is refused with the lock file and the pid; a lock file left by a run that is gone is taken over with a warning.
  The file is removed when the run ends.
"""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

from selfpose_core.data.recovery import pid_alive
from selfpose_core.errors import ConfigError, OutputError

log = logging.getLogger(__name__)

LOCK_NAME = ".selfpose.lock"


def same_or_inside(path: Path, other: Path) -> bool:
    """Whether ``path`` is ``other`` or lies inside it (symlinks resolved)."""
    a, b = Path(path).resolve(), Path(other).resolve()
    return a == b or b in a.parents


def check_run_flags(args, run: str) -> None:
    """The flags every model-writing command shares: ``--threads`` >= 1, ``--overwrite`` without ``--resume``
    (``run`` names what --resume continues, e.g. "the training")."""
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.overwrite and args.resume:
        raise ConfigError(f"--overwrite and --resume exclude each other: --resume continues {run} in --out, "
                          "--overwrite starts a new one")


def check_model_output(out: Path, *, overwrite: bool, model: Path | None = None, resume: bool = False,
                       resumable: Path | None = None) -> None:
    """Refuse to write a model bundle to ``out`` when that would replace something without being asked.

    Args:
        out: the ``--out`` directory.
        overwrite: ``--overwrite`` was given.
        model: the input model bundle: ``out`` may never be it (nor lie inside it), ``--overwrite`` or not.
        resume: ``--resume`` was given.
        resumable: the file whose presence in ``out`` makes ``--resume`` legitimate (an interrupted or finished run).
    """
    out = Path(out)
    if model is not None and same_or_inside(out, model):
        raise OutputError(f"--out {out} is the input model --model {model} (or inside it): the input is never "
                          "overwritten; choose another --out")
    if overwrite:
        return
    can_resume = resumable is not None and resumable.is_file()
    if resume and can_resume:
        return
    held = [p for p in (out / "bundle.yaml", resumable) if p is not None and p.is_file()]
    if held:
        flags = "--overwrite to replace it" + (", --resume to continue that run" if can_resume else "")
        raise OutputError(f"--out {out} already holds a model ({held[0]}); pass {flags}, or choose another --out")


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class OutputLock:
    """Exclusive lock on output directory ``directory`` (created if missing) for the lifetime of a run.

    Use as a context manager. Raises `OutputError` when another live run holds it.
    """

    def __init__(self, directory: str | Path, option: str = "--out") -> None:
        self.directory = Path(directory)
        self.option = option
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> None:
        self._created = not self.directory.exists()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {self.option} {self.directory}: {exc.strerror or exc}") from exc
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                self._remove_created_dir()
                raise OutputError(f"cannot write the lock file {self.path} into {self.option} {self.directory}: "
                                  f"{exc.strerror or exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                pid = _read_pid(self.path)
                raise OutputError(f"{self.option} {self.directory} is in use by another selfpose run (pid "
                                  f"{pid if pid is not None else 'unknown'}, lock file {self.path}); wait for it to "
                                  "finish or choose another directory") from None
            try:  # the previous holder removes the file before unlocking: make sure ours is still the file
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - only under a storm of runs starting and ending
            raise OutputError(f"cannot lock {self.option} {self.directory} ({self.path} keeps changing)")
        previous = _read_pid(self.path)
        if previous is not None and previous != os.getpid():
            state = "still running but not holding it" if pid_alive(previous) else "no longer running"
            log.warning("taking over the stale lock %s of pid %d (%s)", self.path, previous, state)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self.path.unlink()  # before unlocking: a run waiting on this file sees it is gone
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
        self._remove_created_dir()

    def _remove_created_dir(self) -> None:
        if self._created:
            try:
                self.directory.rmdir()  # only if the run wrote nothing there
            except OSError:
                pass

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
