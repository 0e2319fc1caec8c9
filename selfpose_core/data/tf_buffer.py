"""A TF tree read from tf2_msgs/TFMessage (/tf and /tf_static), queried like tf2's ``lookupTransform``.

``lookup(target, source, stamp_ns)`` returns ``T_target_source`` (maps points in ``source`` to ``target``), composed
along the tree through the closest common ancestor; each dynamic edge is interpolated between the two samples that
bracket the stamp (slerp on the rotation, lerp on the translation). Stamps outside an edge's sampled range are
accepted only within ``max_extrapolation_ns`` (then the nearest sample is held), otherwise the lookup fails with a
`RecordingError` naming the frames, the stamp and the available time range. Unlike tf2 there is no cache duration:
the whole recording is kept.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from selfpose_core.config_io import excerpt, one_line
from selfpose_core.data.image_codec import MsgClasses, build_msg, make_header, stamp_to_ns
from selfpose_core.errors import RecordingError, ShapeError

log = logging.getLogger(__name__)


def _name(frame: Any) -> str:
    """A TF frame name as it appears in an error: plain short names as they are, others as a bounded excerpt."""
    return frame if isinstance(frame, str) and len(frame) <= 60 and frame.isprintable() else excerpt(frame, 60)


def transform_msg_to_matrix(transform: Any) -> np.ndarray:
    """geometry_msgs/Transform (``translation``, ``rotation`` x y z w) -> (4, 4) float64."""
    q = transform.rotation
    t = transform.translation
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    T[:3, 3] = (t.x, t.y, t.z)
    return T


def matrix_to_quat_trans(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 4, 4) -> quaternions (..., 4) as x y z w (w >= 0) and translations (..., 3)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4):
        raise ShapeError(f"T must be (..., 4, 4), got {T.shape}")
    q = Rotation.from_matrix(T[..., :3, :3].reshape(-1, 3, 3)).as_quat().reshape(T.shape[:-2] + (4,))
    q = np.where(q[..., 3:4] < 0, -q, q)
    return q, T[..., :3, 3].copy()


@dataclass(slots=True)
class _Edge:
    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    quats: list[np.ndarray] = field(default_factory=list)
    trans: list[np.ndarray] = field(default_factory=list)
    cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.cache is None:
            s = np.asarray(self.stamps, dtype=np.int64)
            order = np.argsort(s, kind="stable")
            self.cache = s[order], np.asarray(self.quats)[order], np.asarray(self.trans)[order]
        return self.cache


class TfBuffer:
    """All transforms of a recording, static and dynamic, with interpolated chain lookups.

    Args:
        max_extrapolation_ns: how far before the first / after the last sample of a dynamic edge a lookup may reach
            (holding the nearest sample); also the reach of an edge with a single sample.
    """

    def __init__(self, max_extrapolation_ns: int = 50_000_000) -> None:
        self.max_extrapolation_ns = int(max_extrapolation_ns)
        self._edges: dict[str, _Edge] = {}

    # ------------------------------------------------------------------ filling
    def add_transform(self, parent: str, child: str, stamp_ns: int, T_parent_child: np.ndarray,
                      static: bool = False) -> None:
        """Add one transform ``T_parent_child`` (4, 4) valid at ``stamp_ns`` (static: at all times)."""
        q, t = matrix_to_quat_trans(np.asarray(T_parent_child, dtype=np.float64))
        self._add(parent.lstrip("/"), child.lstrip("/"), int(stamp_ns), q, t, static)

    def _add(self, parent: str, child: str, stamp: int, q: np.ndarray, t: np.ndarray, static: bool) -> None:
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent or edge.static != static:
            if edge is not None:
                log.warning("TF frame %s re-parented from %s%s to %s%s; keeping the newer", child, edge.parent,
                            " (static)" if edge.static else "", parent, " (static)" if static else "")
            edge = self._edges[child] = _Edge(parent, static)
        if static:
            edge.stamps, edge.quats, edge.trans = [stamp], [q], [t]
        else:
            edge.stamps.append(stamp)
            edge.quats.append(q)
            edge.trans.append(t)
        edge.cache = None

    def add_message(self, msg: Any, static: bool = False) -> None:
        """Add every TransformStamped of a tf2_msgs/TFMessage (rosbags dataclass or rclpy message)."""
        for ts in msg.transforms:
            tr, rot = ts.transform.translation, ts.transform.rotation
            q = np.array([rot.x, rot.y, rot.z, rot.w], dtype=np.float64)
            n = np.linalg.norm(q)
            if not np.isfinite(n) or n < 1e-9:
                raise RecordingError(f"TF {_name(ts.header.frame_id)} -> {_name(ts.child_frame_id)} has an invalid "
                                     f"quaternion {q}")
            t = np.array([tr.x, tr.y, tr.z], dtype=np.float64)
            if not np.isfinite(t).all():
                stamp = stamp_to_ns(ts.header.stamp)
                raise RecordingError(f"TF {_name(ts.header.frame_id)} -> {_name(ts.child_frame_id)} at stamp {stamp} "
                                     "ns has a "
                                     f"non-finite translation {t}")
            self._add(ts.header.frame_id.lstrip("/"), ts.child_frame_id.lstrip("/"), stamp_to_ns(ts.header.stamp),
                      q / n, t, static)

    # ------------------------------------------------------------------ queries
    @property
    def frames(self) -> list[str]:
        """Every frame named in the tree."""
        return sorted(set(self._edges) | {e.parent for e in self._edges.values()})

    def _ancestors(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._edges:
            nxt = self._edges[chain[-1]].parent
            if nxt in chain:
                raise RecordingError(f"TF tree has a loop through frame {_name(nxt)}")
            chain.append(nxt)
        return chain

    def chain(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """The frames from ``source`` up to the common ancestor and from ``target`` up to it (both inclusive)."""
        target, source = target.lstrip("/"), source.lstrip("/")
        up_s, up_t = self._ancestors(source), self._ancestors(target)
        common = next((f for f in up_s if f in set(up_t)), None)
        if common is None:
            known = one_line(", ".join(_name(f) for f in self.frames[:20]) or "none", 200)
            raise RecordingError(f"TF never connects frame {excerpt(source, 60)} to frame {excerpt(target, 60)} "
                                 f"(frames in the tree: {known})")
        return up_s[: up_s.index(common) + 1], up_t[: up_t.index(common) + 1]

    def lookup(self, target: str, source: str, stamp_ns: int | np.ndarray) -> np.ndarray:
        """``T_target_source`` at ``stamp_ns``: (4, 4) for a scalar stamp, (N, 4, 4) for N stamps.

        Raises `RecordingError` when the frames are not connected or a stamp lies outside an edge's samples by more
        than ``max_extrapolation_ns`` (the message names the frames, the stamp and the available range).
        """
        T, valid, reason = self._lookup(target, source, stamp_ns)
        if not np.all(valid):
            raise RecordingError(reason)
        return T

    def lookup_valid(self, target: str, source: str, stamps_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like `lookup` for (N,) stamps but never raising for extrapolation: (T (N, 4, 4), valid (N,) bool).

        Invalid entries hold the clamped (nearest-sample) transform. Unconnected frames still raise.
        """
        T, valid, _ = self._lookup(target, source, np.asarray(stamps_ns, dtype=np.int64).reshape(-1))
        return T, valid

    def _lookup(self, target: str, source: str, stamp_ns: int | np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        scalar = np.ndim(stamp_ns) == 0
        stamps = np.atleast_1d(np.asarray(stamp_ns, dtype=np.int64))
        up_s, up_t = self.chain(target, source)
        n = stamps.shape[0]
        valid = np.ones(n, dtype=bool)
        reasons: list[str] = []
        ups = []
        for chain in (up_s, up_t):  # T_common_chain[0] by composing the edges child first
            T = np.broadcast_to(np.eye(4), (n, 4, 4)).copy()
            for child in chain[:-1]:
                T_edge, ok, why = self._edge_at(child, stamps, target, source)
                T = T_edge @ T
                valid &= ok
                reasons.append(why)
            ups.append(T)
        T_c_s, T_c_t = ups
        R_ct, t_ct = T_c_t[:, :3, :3], T_c_t[:, :3, 3]
        T_t_c = np.broadcast_to(np.eye(4), (n, 4, 4)).copy()
        T_t_c[:, :3, :3] = np.swapaxes(R_ct, 1, 2)
        T_t_c[:, :3, 3] = -np.einsum("nji,nj->ni", R_ct, t_ct)
        out = T_t_c @ T_c_s
        return (out[0] if scalar else out), valid, next((r for r in reasons if r), "")

    def _edge_at(self, child: str, stamps: np.ndarray, target: str, source: str
                 ) -> tuple[np.ndarray, np.ndarray, str]:
        """T_parent_child (N, 4, 4) at ``stamps``, validity (N,) and an error text for the first invalid stamp."""
        edge = self._edges[child]
        s, q, t = edge.arrays()
        n = stamps.shape[0]
        if edge.static:
            R = np.broadcast_to(Rotation.from_quat(q[0]).as_matrix(), (n, 3, 3))
            return _assemble(R, np.broadcast_to(t[0], (n, 3))), np.ones(n, dtype=bool), ""
        tol = self.max_extrapolation_ns
        valid = (stamps >= s[0] - tol) & (stamps <= s[-1] + tol)
        if s.shape[0] == 1:
            R = np.broadcast_to(Rotation.from_quat(q[0]).as_matrix(), (n, 3, 3))
            T = _assemble(R, np.broadcast_to(t[0], (n, 3)))
        else:
            i = np.clip(np.searchsorted(s, stamps, side="right") - 1, 0, s.shape[0] - 2)
            dt = (s[i + 1] - s[i]).astype(np.float64)
            alpha = np.clip(np.divide((stamps - s[i]).astype(np.float64), dt, out=np.zeros(n), where=dt > 0), 0, 1)
            q0, q1 = q[i], q[i + 1]
            r0 = Rotation.from_quat(q0)
            rel = (r0.inv() * Rotation.from_quat(q1)).as_rotvec()
            R = (r0 * Rotation.from_rotvec(rel * alpha[:, None])).as_matrix()
            T = _assemble(R, t[i] + alpha[:, None] * (t[i + 1] - t[i]))
        why = ""
        if not np.all(valid):
            bad = int(stamps[np.argmin(valid)])
            why = (f"TF lookup {_name(target)} <- {_name(source)} at stamp {bad} ns ({bad * 1e-9:.3f} s) would "
                   "extrapolate the "
                   f"transform {_name(edge.parent)} -> {_name(child)}, available from {int(s[0])} to {int(s[-1])} ns "
                   f"({s[0] * 1e-9:.3f}-{s[-1] * 1e-9:.3f} s, tolerance {tol * 1e-9:.3f} s)")
        return T, valid, why


def _assemble(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def tf_message(transforms: Iterable[tuple[str, str, int, np.ndarray]], classes: MsgClasses | None = None) -> Any:
    """Build a tf2_msgs/TFMessage from (parent, child, stamp_ns, T_parent_child (4, 4)) tuples.

    ``classes`` as in `selfpose_core.data.image_codec` (None: rosbags dataclasses).
    """
    out = []
    for parent, child, stamp, T in transforms:
        q, t = matrix_to_quat_trans(T)
        tr = build_msg(classes, "geometry_msgs/msg/Transform",
                  translation=build_msg(classes, "geometry_msgs/msg/Vector3", x=float(t[0]), y=float(t[1]), z=float(t[2])),
                  rotation=build_msg(classes, "geometry_msgs/msg/Quaternion", x=float(q[0]), y=float(q[1]),
                                z=float(q[2]), w=float(q[3])))
        out.append(build_msg(classes, "geometry_msgs/msg/TransformStamped", header=make_header(stamp, parent, classes),
                        child_frame_id=child, transform=tr))
    return build_msg(classes, "tf2_msgs/msg/TFMessage", transforms=out)
