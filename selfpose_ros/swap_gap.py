"""The estimator node's bundle swap measured without ROS: the gaps between published frames before, during and after
a swap, with the new bundle loaded in a child process (the node's way) or in a thread of the serving process.

``python -m selfpose_ros.swap_gap --bag REC --model A --swap-to B [--load thread|child]`` plays the recording's
frames (decoded first) at ``--rate`` Hz into the node's `NewestFrameWorker` + `ModelSlot`, requests the swap after
``--before`` published frames and stops ``--after`` frames after it; it prints the intervals between published
frames. Figures depend on the machine and its load: compare the two ``--load`` modes in one session.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import threading
import time

from selfpose_core.data.recording import Recording
from selfpose_core.estimate.publishing import PoseMessageBuilder, publish_config_for_bundle
from selfpose_core.estimate.stream import NewestFrameWorker, load_estimator
from selfpose_ros.bundle_loader import BundleLoader
from selfpose_ros.model_reload import ModelSlot, Serving


def _summary(gaps: list[float]) -> str:
    if not gaps:
        return "no frame"
    return f"median {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s ({len(gaps)} intervals)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m selfpose_ros.swap_gap", description=__doc__.splitlines()[0])
    p.add_argument("--bag", required=True, help="recording whose frames are played")
    p.add_argument("--model", required=True, help="bundle serving at the start")
    p.add_argument("--swap-to", required=True, help="bundle swapped in")
    p.add_argument("--load", choices=("child", "thread"), default="child",
                   help="load the new bundle in a child process (the node's way) or in a thread of this process")
    p.add_argument("--rate", type=float, default=2.0, help="frames per second played")
    p.add_argument("--before", type=int, default=4, help="published frames before the swap is requested")
    p.add_argument("--after", type=int, default=4, help="published frames after the swap")
    p.add_argument("--num-threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--rgb-only", action="store_true", help="drop the frames' depth (the node's use_depth:=false)")
    args = p.parse_args(argv)

    with Recording(args.bag, require_pose=False) as rec:
        frames = [rec[i] for i in range(min(len(rec), 20))]
    if args.rgb_only:
        frames = [dataclasses.replace(f, depth=None) for f in frames]
    published: list[tuple[float, str]] = []  # (time, serving bundle) of each published frame
    loader = BundleLoader("cpu", args.num_threads)

    def in_thread(path: str) -> Serving:  # the node's way before the child process
        return Serving(path, load_estimator(path, "cpu", args.num_threads),
                       PoseMessageBuilder(publish_config_for_bundle(path)))

    def child(path: str) -> Serving:  # the node's way
        loaded = loader(path, frames[0])
        return Serving(path, loaded.estimator, PoseMessageBuilder(loaded.publish_config))

    slot = ModelSlot(in_thread(args.model), child if args.load == "child" else in_thread)

    def estimate(frame):
        serving = slot.current
        serving.estimator.estimate(frame)
        return serving.path

    stop = threading.Event()
    with NewestFrameWorker(estimate, lambda _, path: published.append((time.monotonic(), path))) as worker:
        def camera() -> None:
            i = 0
            while not stop.is_set():
                worker.submit(frames[i % len(frames)], i * int(1e9 / args.rate))
                i += 1
                time.sleep(1.0 / args.rate)

        feeder = threading.Thread(target=camera, daemon=True)
        feeder.start()
        while len(published) < args.before + 1:
            time.sleep(0.05)
        requested = time.monotonic()
        slot.request(args.swap_to)
        slot.wait()
        swapped = time.monotonic()
        n_swap = len(published)
        while len(published) < n_swap + args.after + 1:
            time.sleep(0.05)
        stop.set()
        feeder.join()
    times = [t for t, _ in published]
    gaps = [(b - a, a, b, pb) for (a, _), (b, pb) in zip(published, published[1:])]
    before = [g for g, a, b, _ in gaps if b <= requested]
    during = [g for g, a, b, pb in gaps if requested < b and pb != args.swap_to]
    across = [g for g, a, b, pb in gaps if pb == args.swap_to and published[times.index(a)][1] != args.swap_to]
    after = [g for g, a, b, pb in gaps if pb == args.swap_to and published[times.index(a)][1] == args.swap_to]
    print(f"{args.swap_to} loaded in a {'child process' if args.load == 'child' else 'thread'} in "
          f"{swapped - requested:.1f} s while {args.model} served frames played at {args.rate:g} Hz; "
          f"intervals between published frames:")
    print(f"  before the request: {_summary(before)}")
    print(f"  during the load:    {_summary(during)}")
    print(f"  across the swap:    {_summary(across)}")
    print(f"  after the swap:     {_summary(after)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
