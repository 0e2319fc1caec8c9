"""The `main()` of every selfpose node: rclpy without its signal handlers, the entry point's `StopSignals`, short
waits so that the handler runs, and a clean shutdown (node.close(): the bag closed, the child stopped, the worker
joined)."""
from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.signals import SignalHandlerOptions

from selfpose_core.cli.signals import StopSignals
from selfpose_core.errors import SelfposeError


def run_node(make_node: Callable[[], Any], make_executor: Callable[[], Any], name: str,
             args: list[str] | None = None) -> int:
    """Create the node with ``make_node`` and spin it on ``make_executor()`` (both made after rclpy.init) until Ctrl-C / SIGTERM (the first is raised
    between callbacks and, where a bag is written, after the frame being written; a second one at once) or
    shutdown. Returns the exit code: 0, or 2 with a fatal log line for a `SelfposeError` (bad parameters)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    log = get_logger(name)
    node = None
    try:
        with StopSignals(on_signal=lambda sig: log.info(f"{signal.Signals(sig).name}: stopping")):
            node = make_node()
            executor = make_executor()
            executor.add_node(node)
            while rclpy.ok():  # short waits: the signal handler runs between them
                executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except SystemExit as exc:  # SIGTERM
        return 0 if exc.code in (0, 143) else int(exc.code or 1)
    except SelfposeError as exc:
        log.fatal(str(exc))
        return 2
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
