"""Load a model bundle's estimator in a child process, off the serving process (plain Python, no rclpy).

Why a process and not a thread: most of a bundle's load is Python holding the GIL (trimesh's stable poses of every
mesh: about 80 % of a 2-3 s load; parsing bundle.yaml for the messages' meshes: 0.7 s), which a loading thread shares
with the thread estimating frames, so every frame during the load took about twice as long (docs/ros.md, "A new
model without a restart"). The child loads the bundle (`load_estimator`: weights read with
``torch.load(weights_only=True)`` as everywhere) and its `PublishConfig`, runs the estimator once on a trial frame (a
bundle that loads but cannot estimate is refused before it serves) and pickles both into a private temporary
directory; the parent unpickles them (about 0.2 s) and swaps them in. The child runs at the lowest CPU priority
(``nice``) so that the frames being served go first.

Run as ``python -m selfpose_ros.bundle_loader BUNDLE --out FILE [--frame FILE] ...`` by `BundleLoader`; errors come
back as its last stderr line (exit 2 for a `SelfposeError`).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfpose_core.errors import ModelError, SelfposeError


@dataclass(slots=True, frozen=True)
class LoadedBundle:
    """What the child hands back: the estimator and the `PublishConfig` of its messages."""

    estimator: Any
    publish_config: Any


class BundleLoader:
    """``loader(path, trial_frame, publish_options) -> LoadedBundle``: the bundle loaded, and tried on
    ``trial_frame``, in a child; ``publish_options`` are `publish_config_for_bundle`'s keyword arguments (JSON values).

    Args:
        device: torch device of the estimator (the child creates it there; unpickling restores it there).
        num_threads: torch CPU threads (0: torch's default).
        nice: CPU priority increment of the child (19: lowest).
    """

    def __init__(self, device: str = "cpu", num_threads: int = 0, nice: int = 19) -> None:
        self.device = device
        self.num_threads = int(num_threads)
        self.nice = int(nice)
        self.children = 0  # child processes started (for tests and logs)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, path: str, trial_frame: Any = None, publish_options: dict[str, Any] | None = None) -> LoadedBundle:
        with tempfile.TemporaryDirectory(prefix="selfpose-load-") as tmp:  # mode 0700: this user's only
            out = Path(tmp) / "estimator.pickle"
            cmd = [sys.executable, "-m", "selfpose_ros.bundle_loader", str(path), "--out", str(out),
                   "--device", self.device, "--num-threads", str(self.num_threads), "--nice", str(self.nice),
                   "--publish-options", json.dumps(publish_options or {})]
            if trial_frame is not None:
                frame_file = Path(tmp) / "frame.pickle"
                frame_file.write_bytes(pickle.dumps(trial_frame, protocol=pickle.HIGHEST_PROTOCOL))
                cmd += ["--frame", str(frame_file)]
            with self._lock:
                if self._closed:
                    raise ModelError(f"model {path}: not loaded, the node is shutting down")
                self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True)
                self.children += 1
            _, err = self._proc.communicate()
            code = self._proc.returncode
            with self._lock:
                self._proc = None
            if code != 0:
                lines = [ln for ln in err.splitlines() if ln.strip()]
                raise ModelError(lines[-1] if lines else f"model {path}: the loading process ended with {code}")
            with open(out, "rb") as f:
                return LoadedBundle(*pickle.load(f))  # written by our own child, in our private directory

    def close(self) -> None:
        """End a load in progress (its caller gets a `ModelError`) and refuse later ones."""
        with self._lock:
            self._closed = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()


def _child(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m selfpose_ros.bundle_loader",
                                description="load a model bundle and pickle its ready estimator and publish config "
                                            "(BundleLoader's child)")
    p.add_argument("bundle")
    p.add_argument("--out", type=Path, required=True, help="pickle file to write the estimator to")
    p.add_argument("--frame", type=Path, help="pickled Frame to run the estimator on once before it is accepted")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-threads", type=int, default=0)
    p.add_argument("--nice", type=int, default=19)
    p.add_argument("--publish-options", default="{}", help="publish_config_for_bundle's keyword arguments (JSON)")
    args = p.parse_args(argv)
    try:
        os.nice(args.nice)
    except OSError:
        pass
    from selfpose_core.estimate.publishing import publish_config_for_bundle
    from selfpose_core.estimate.stream import load_estimator
    try:
        estimator = load_estimator(args.bundle, args.device, args.num_threads)
        config = publish_config_for_bundle(args.bundle, **json.loads(args.publish_options))
        if args.frame is not None:
            frame = pickle.loads(args.frame.read_bytes())
            try:
                estimator.estimate(frame)
            except Exception as exc:  # noqa: BLE001 - any failure on a real frame refuses the bundle
                raise ModelError(f"model {args.bundle} loads but fails on the newest frame: "
                                 f"{type(exc).__name__}: {exc}") from exc
        args.out.write_bytes(pickle.dumps((estimator, config), protocol=pickle.HIGHEST_PROTOCOL))
    except SelfposeError as exc:
        print(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        print(f"model {args.bundle}: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child())
