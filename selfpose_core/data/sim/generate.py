"""Orchestration of the embedded SMOT-like scene: objects, scenes, trajectories, rendering, camera effects, output.

Randomness: every component draws from its own generator ``default_rng([seed, stream, *keys])`` (objects, the
scene of each background style, each trajectory, the odometry, each camera, each frame), so one frame's bytes
do not depend on how many frames or trajectories were asked for, and the same seed gives the same bytes.

Output layout of :func:`simulate` (docs/demo_scene.md)::

    DIR/objects.yaml, DIR/models/<name>.ply    untextured CAD models for the learner (metres); category objects
                                               (--categories) are listed by category only, without a mesh
    DIR/recording/                             rosbag2 of the training loop, odometry poses, no ground truth
    DIR/test_recordings/<name>/                rosbag2 of each held-out trajectory (marker-accurate poses)
    DIR/bop/                                   BOP copy with ground truth: split train_loop scene 1, split test
                                               scenes 1.. (one per held-out trajectory, in order); category
                                               instances' meshes and poses in their NOCS frame (evaluation only),
                                               listed in models/nocs_instances.json, and
                                               scene_handle_visibility.json per scene with mug instances
    DIR/scene.yaml                             seed, difficulty, parameters, object poses, trajectory summaries
"""
from __future__ import annotations

import logging
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from selfpose_core.data.bop import BopWriter
from selfpose_core.data.recording_writer import RecordingWriter
from selfpose_core.data.sim.camera_effects import (REALSENSE_DEPTH, ColorEffects, CameraResponse, DepthEffects,
                                                   apply_color, apply_depth, sample_response)
from selfpose_core.data.sim.catalog import TARGETS, SimObject, make_targets
from selfpose_core.data.sim.category_objects import (category_object, handle_visible, write_handle_visibility,
                                                     write_nocs_instances)
from selfpose_core.data.sim.category_shapes import HELDOUT_START, CategoryInstance, instance
from selfpose_core.data.sim.odometry import OdometryNoise, base_poses, drift_poses
from selfpose_core.data.sim.raycast_renderer import RenderOutput, SceneRaycaster, render_cad
from selfpose_core.data.sim.scene import HardLayout, Scene, build_scene
from selfpose_core.data.sim.trajectories import (TEST_TRAJECTORIES, TRAIN_LOOP, TrajectorySpec, elevation_deg,
                                                 make_trajectory)
from selfpose_core.errors import ConfigError
from selfpose_core.geometry.se3 import compose, invert
from selfpose_core.mesh.categories import CATEGORIES, T_ZUP_NOCS
from selfpose_core.mesh.loading import save_mesh
from selfpose_core.mesh.objects_config import write_objects_config
from selfpose_core.types import CameraIntrinsics, Frame, ObjectModel

log = logging.getLogger(__name__)

STAMP0_NS = 1_700_000_000 * 10 ** 9  # start time of the first trajectory
OUTPUTS = ("objects.yaml", "models", "recording", "test_recordings", "bop", "scene.yaml")
_STREAM = {"objects": 1, "scene": 2, "trajectory": 3, "odometry": 4, "camera": 5, "frame": 6, "categories": 7}
DIFFICULTIES = ("normal", "hard")


@dataclass(slots=True)
class SimConfig:
    """Parameters of the simulation (all stored in scene.yaml).

    difficulty "hard": the table of :class:`HardLayout` (lying targets, a pair in contact, look-alike distractors)
    and, unless ``depth_effects`` is given, the active stereo depth of ``REALSENSE_DEPTH``.
    categories: one held-out instance of each named NOCS category (a category named twice: two instances), after
    the ``objects`` (obj_ids continue after theirs); docs/categories.md.
    """

    seed: int = 0
    difficulty: str = "normal"  # normal | hard
    objects: list[str] = field(default_factory=lambda: list(TARGETS))
    frames: int = 120  # training loop
    test_frames: int = 40  # per held-out trajectory
    width: int = 640
    height: int = 480
    fx: float = 570.0
    fy: float = 570.0
    depth: bool = True
    image_format: str = "raw"  # colour in the recordings: raw | jpeg | png
    n_clutter: int = 3
    shadows: bool = True
    rate_hz: float = 2.0  # keyframes per second
    train: TrajectorySpec = TRAIN_LOOP
    tests: tuple[TrajectorySpec, ...] = TEST_TRAJECTORIES
    color_effects: ColorEffects = field(default_factory=ColorEffects)
    depth_effects: DepthEffects = field(default_factory=DepthEffects)
    odometry: OdometryNoise = field(default_factory=OdometryNoise)
    categories: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.test_frames < 0:
            raise ConfigError(f"frames must be >= 1 and test_frames >= 0, got {self.frames}, {self.test_frames}")
        if self.image_format not in ("raw", "jpeg", "png"):
            raise ConfigError(f"image_format must be raw, jpeg or png, got {self.image_format!r}")
        if not self.objects and not self.categories:
            raise ConfigError("objects: at least one simulated object or category is needed")
        unknown = [c for c in self.categories if c not in CATEGORIES]
        if unknown:
            raise ConfigError(f"categories: unknown {unknown}; available: {', '.join(CATEGORIES)}")
        if len(set(self.objects)) != len(self.objects):
            raise ConfigError(f"objects: duplicate names in {self.objects}")
        if self.difficulty not in DIFFICULTIES:
            raise ConfigError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {self.difficulty!r}")
        if self.difficulty == "hard" and self.depth_effects == DepthEffects():
            self.depth_effects = REALSENSE_DEPTH

    @property
    def K(self) -> CameraIntrinsics:
        return CameraIntrinsics(self.fx, self.fy, (self.width - 1) / 2, (self.height - 1) / 2, self.width,
                                self.height)


@dataclass(slots=True)
class Trajectory:
    """One camera path: true poses ``T_world_cam`` (N, 4, 4), the recorded ones (odometry for the training loop,
    equal to the true ones for test trajectories) and stamps (N,) int ns."""

    spec: TrajectorySpec
    index: int  # 0 = training loop, 1.. = tests
    T_world_cam: np.ndarray
    T_world_cam_recorded: np.ndarray
    stamps_ns: np.ndarray


@dataclass(slots=True)
class SimView:
    """One simulated frame: the real-domain ``frame`` (recorded pose), the true pose, ground truth for every target
    in view [(obj_id, T_cam_obj)], its visible and full masks (H, W) bool, the clean render, and whether the handle
    of each mug category instance in view can be seen {obj_id: bool}."""

    trajectory: str
    index: int
    frame: Frame
    T_world_cam_true: np.ndarray
    gt: list[tuple[int, np.ndarray]]
    masks_visib: list[np.ndarray]
    masks: list[np.ndarray]
    render: RenderOutput
    handle_visible: dict[int, bool] = field(default_factory=dict)


def _rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _STREAM[stream], *[int(k) for k in keys]])


class Simulator:
    """The simulated world for one :class:`SimConfig`; renders any frame of any trajectory on demand."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.targets: list[SimObject] = make_targets(config.objects, _rng(config.seed, "objects"))
        self.category_instances: dict[int, CategoryInstance] = {}  # obj_id -> held-out instance
        self._nocs_objects: dict[int, SimObject] = {}  # obj_id -> the instance in its NOCS frame
        for k, category in enumerate(config.categories):
            inst = instance(category, HELDOUT_START + config.categories[:k].count(category), config.seed)
            zup, nocs = category_object(inst, _rng(config.seed, "categories", k))
            self.targets.append(zup)
            self.category_instances[len(self.targets)] = inst
            self._nocs_objects[len(self.targets)] = nocs
        self._scenes: dict[int, Scene] = {}
        self._raycasters: dict[int, SceneRaycaster] = {}
        self._responses: dict[int, CameraResponse] = {}
        specs = [config.train] + list(config.tests)
        counts = [config.frames] + [config.test_frames] * len(config.tests)
        self.trajectories: list[Trajectory] = []
        for i, (spec, n) in enumerate(zip(specs, counts)):
            if n == 0:
                continue
            T = make_trajectory(spec, n, self.scene(spec.style).table_center, _rng(config.seed, "trajectory", i))
            rec = drift_poses(T, _rng(config.seed, "odometry", i), config.odometry) if i == 0 else T.copy()
            stamps = STAMP0_NS + i * 10 ** 12 + np.round(np.arange(n) * 1e9 / config.rate_hz).astype(np.int64)
            self.trajectories.append(Trajectory(spec, i, T, rec, stamps))

    def cad_models(self) -> list[ObjectModel]:
        """Untextured CAD models of the targets, obj_id 1..N in config order (category instances in their NOCS
        frame: for evaluation, never for the learner)."""
        return [self._nocs_objects.get(k + 1, o).cad_model(k + 1) for k, o in enumerate(self.targets)]

    def scene(self, style: int) -> Scene:
        """The world of background style ``style`` (0 = training; others re-arrange the objects)."""
        if style not in self._scenes:
            hard = HardLayout() if self.config.difficulty == "hard" else None
            scene = build_scene(self.targets, _rng(self.config.seed, "scene", style), style,
                                self.config.n_clutter, hard=hard)
            for inst in scene.instances:  # category instances: laid out z up, rendered in their NOCS frame
                if inst.obj_id in self._nocs_objects:
                    inst.obj, inst.T_world_obj = self._nocs_objects[inst.obj_id], inst.T_world_obj @ T_ZUP_NOCS
            self._scenes[style] = scene
        return self._scenes[style]

    def raycaster(self, style: int) -> SceneRaycaster:
        if style not in self._raycasters:
            self._raycasters[style] = SceneRaycaster(self.scene(style), shadows=self.config.shadows)
        return self._raycasters[style]

    def response(self, trajectory: int) -> CameraResponse:
        if trajectory not in self._responses:
            self._responses[trajectory] = sample_response(_rng(self.config.seed, "camera", trajectory),
                                                          self.config.color_effects)
        return self._responses[trajectory]

    def render_view(self, traj: Trajectory, k: int) -> SimView:
        """Render frame ``k`` of ``traj`` with the real-camera effects."""
        cfg, K = self.config, self.config.K
        scene, rc = self.scene(traj.spec.style), self.raycaster(traj.spec.style)
        T = traj.T_world_cam[k]
        out = rc.render(T, K)
        nxt = min(k + 1, len(traj.T_world_cam) - 1)
        prv = nxt - 1 if nxt > 0 else 0
        motion = _project(K, traj.T_world_cam[nxt], scene.table_center) - _project(K, traj.T_world_cam[prv],
                                                                                   scene.table_center)
        rng = _rng(cfg.seed, "frame", traj.index, k)
        rgb = apply_color(out.color, self.response(traj.index), rng, motion, cfg.color_effects)
        depth = apply_depth(out.depth, rng, out.albedo_luma, out.specular, out.cos_view, cfg.depth_effects,
                            K.fx) if cfg.depth else None
        gt, vis, full, handles = [], [], [], {}
        for i, inst in enumerate(scene.instances):
            if inst.obj_id == 0:
                continue
            m = rc.full_mask(i, T, K)
            if not m.any():
                continue
            gt.append((inst.obj_id, compose(invert(T), inst.T_world_obj)))
            vis.append(out.instance == i)
            full.append(m)
            category = self.category_instances.get(inst.obj_id)
            if category is not None and category.category == "mug":  # parts: cup, handle
                handles[inst.obj_id] = handle_visible(category.parts[1], gt[-1][1], K, out.depth, vis[-1])
        frame = Frame(rgb=rgb, K=K, stamp_ns=int(traj.stamps_ns[k]), depth=depth,
                      T_world_cam=traj.T_world_cam_recorded[k].copy(), index=k)
        return SimView(traj.spec.name, k, frame, T.copy(), gt, vis, full, out, handles)

    def views(self, traj: Trajectory, workers: int = 2) -> Iterator[SimView]:
        """Every frame of ``traj`` in order, rendered ``workers`` frames ahead in threads (the ray casting, OpenCV
        and most numpy work release the GIL; every frame has its own generator, so the result is the same)."""
        self.raycaster(traj.spec.style)  # build shared state before the threads start
        self.response(traj.index)
        n = len(traj.T_world_cam)
        if workers <= 1:
            for k in range(n):
                yield self.render_view(traj, k)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = deque(pool.submit(self.render_view, traj, k) for k in range(min(workers, n)))
            for k in range(n):
                view = pending.popleft().result()
                if k + workers < n:
                    pending.append(pool.submit(self.render_view, traj, k + workers))
                yield view


def _project(K: CameraIntrinsics, T_world_cam: np.ndarray, p_world: np.ndarray) -> np.ndarray:
    X = T_world_cam[:3, :3].T @ (p_world - T_world_cam[:3, 3])
    return np.array([K.fx * X[0] / X[2] + K.cx, K.fy * X[1] / X[2] + K.cy])


def prepare_output(out_dir: str | Path, force: bool = False) -> Path:
    """Create ``out_dir``; refuse a non-empty one unless ``force`` (then the simulator's outputs there are removed)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"--out {out} is not empty (use --force to replace the simulator's outputs there)")
        for name in OUTPUTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _yaml_safe(x: object) -> object:
    if isinstance(x, dict):
        return {k: _yaml_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_yaml_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _yaml_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        return round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    return x


def simulate(out_dir: str | Path, config: SimConfig = SimConfig(), *, force: bool = False,
             progress: bool = True) -> dict:
    """Simulate the world of ``config`` and write the dataset to ``out_dir`` (layout in the module docstring).

    Returns the summary that is also written to scene.yaml.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    out = prepare_output(out_dir, force)
    sim = Simulator(config)
    cad = sim.cad_models()
    entries = []
    for model in cad:
        if model.obj_id in sim.category_instances:  # known by category only: no mesh for the learner
            entries.append({"name": model.name, "category": model.category, "obj_id": model.obj_id})
            continue
        path = save_mesh(model, out / "models" / f"{model.name}.ply")
        entries.append({"name": model.name, "mesh": path.relative_to(out).as_posix(), "units": "m",
                        "symmetry": model.symmetry,
                        "category": model.category, "obj_id": model.obj_id})
    write_objects_config(out / "objects.yaml", entries)
    bop_train = BopWriter(out / "bop", "train_loop")
    bop_train.write_models(cad)
    if sim.category_instances:
        write_nocs_instances(out / "bop" / "models", sim.category_instances)
    bop_test = BopWriter(out / "bop", "test")
    total = sum(len(t.T_world_cam) for t in sim.trajectories)
    summary_trajs = []
    with tqdm(total=total, desc="simulate", unit="frame", disable=not progress) as bar:
        for traj in sim.trajectories:
            train = traj.index == 0
            bag = out / "recording" if train else out / "test_recordings" / traj.spec.name
            bop, scene_id = (bop_train, 1) if train else (bop_test, traj.index)
            scene = sim.scene(traj.spec.style)
            handles: dict[int, dict[int, bool]] = {}
            with RecordingWriter(bag, image_format=config.image_format) as writer:
                T_table = np.eye(4)
                T_table[:3, 3] = scene.table_center
                writer.write_static_tf("world", "table", T_table, int(traj.stamps_ns[0]))
                for view in sim.views(traj):
                    writer.write_frame(view.frame)
                    true_frame = Frame(rgb=view.frame.rgb, K=view.frame.K, stamp_ns=view.frame.stamp_ns,
                                       depth=view.frame.depth, T_world_cam=view.T_world_cam_true, index=view.index)
                    bop.write_frame(scene_id, view.index, true_frame, view.gt, view.masks_visib, view.masks)
                    if view.handle_visible:
                        handles[view.index] = view.handle_visible
                    bar.update(1)
            if handles:
                write_handle_visibility(bop.scene_dir(scene_id), handles)
            elev = elevation_deg(traj.T_world_cam, scene.table_center)
            entry = {"name": traj.spec.name, "recording": str(bag.relative_to(out)),
                     "bop": {"split": "train_loop" if train else "test", "scene_id": scene_id},
                     "frames": len(traj.T_world_cam), "style": traj.spec.style,
                     "elevation_deg": [float(elev.min()), float(elev.max())],
                     "radius_m": [float(x) for x in _radius_range(traj, scene)],
                     "poses": "odometry (drifting)" if train else "true"}
            if train:
                entry["odometry_drift_final"] = _drift_summary(traj)
            summary_trajs.append(entry)
    bop_train.close()
    bop_test.close()
    train_scene = sim.scene(config.train.style)
    summary = {
        "seed": config.seed, "difficulty": config.difficulty, "config": asdict(config), "camera": asdict(config.K),
        "world": "metres, z up, origin on the floor under the table-top centre",
        "table_center": train_scene.table_center,
        "objects": [{"name": o.name, "obj_id": k + 1, "category": o.category, "textureless": o.textureless,
                     "symmetric": o.symmetry.is_symmetric, "faces": len(cad[k].faces),
                     "size_m": cad[k].vertices.max(0) - cad[k].vertices.min(0), "diameter_m": cad[k].diameter,
                     "T_world_obj": next(i.T_world_obj for i in train_scene.instances if i.obj_id == k + 1),
                     **_category_summary(sim.category_instances.get(k + 1))}
                    for k, o in enumerate(sim.targets)],
        "trajectories": summary_trajs,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,  # all threads of this process
        "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }
    (out / "scene.yaml").write_text(yaml.safe_dump(_yaml_safe(summary), sort_keys=False))
    log.info("simulated %d frames into %s in %.1f s", total, out, summary["seconds"])
    return summary


def _category_summary(inst: CategoryInstance | None) -> dict:
    """scene.yaml fields of a category instance: its family index and NOCS size and scale (empty for others)."""
    if inst is None:
        return {}
    return {"instance_index": inst.index, "heldout": inst.heldout, "nocs_size_m": inst.size,
            "nocs_scale_m": inst.scale, "shape": inst.params}


def _radius_range(traj: Trajectory, scene: Scene) -> tuple[float, float]:
    r = np.linalg.norm(traj.T_world_cam[:, :2, 3] - scene.table_center[:2], axis=1)
    return float(r.min()), float(r.max())


def _drift_summary(traj: Trajectory) -> dict[str, float]:
    """Odometry error at the last frame: planar translation (m) and yaw (deg)."""
    b_true, b_rec = base_poses(traj.T_world_cam[-1:]), base_poses(traj.T_world_cam_recorded[-1:])
    dyaw = (b_rec[0, 2] - b_true[0, 2] + np.pi) % (2 * np.pi) - np.pi
    return {"translation_m": float(np.linalg.norm(b_rec[0, :2] - b_true[0, :2])), "yaw_deg": float(np.degrees(dyaw))}


def render_preview(config: SimConfig, path: str | Path, frame: int = 0) -> Path:
    """Write a PNG: frame ``frame`` of the training loop in the real domain next to a flat-shaded render of the
    untextured CAD models at their true poses (same view)."""
    import cv2

    sim = Simulator(config)
    traj = sim.trajectories[0]
    view = sim.render_view(traj, min(frame, len(traj.T_world_cam) - 1))
    cad = {m.obj_id: m for m in sim.cad_models()}
    flat = render_cad([cad[i] for i, _ in view.gt], [T for _, T in view.gt], config.K)
    gap = np.full((config.height, 8, 3), 255, np.uint8)
    img = np.concatenate([view.frame.rgb, gap, flat], 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img[:, :, ::-1]):
        raise ConfigError(f"cannot write preview image {path}")
    return path


def render_montage(config: SimConfig, path: str | Path, width: int = 960) -> Path:
    """Write a PNG with the middle frame of every trajectory (training loop first) in a grid of two columns,
    each labelled with its name and elevation, scaled to ``width`` pixels."""
    import cv2

    sim = Simulator(config)
    tiles = []
    for traj in sim.trajectories:
        k = len(traj.T_world_cam) // 2
        img = np.ascontiguousarray(sim.render_view(traj, k).frame.rgb)
        el = elevation_deg(traj.T_world_cam[k:k + 1], sim.scene(traj.spec.style).table_center)[0]
        cv2.putText(img, f"{traj.spec.name}  elev {el:.0f} deg", (10, 28), cv2.FONT_HERSHEY_SIMPLEX,
                    0.8 * config.width / 640, (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(img)
    if len(tiles) % 2:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[i:i + 2], 1) for i in range(0, len(tiles), 2)], 0)
    grid = cv2.resize(grid, (width, int(round(grid.shape[0] * width / grid.shape[1]))), interpolation=cv2.INTER_AREA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid[:, :, ::-1]):
        raise ConfigError(f"cannot write montage image {path}")
    return path
