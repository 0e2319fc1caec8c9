"""PoseEstimator: a model bundle applied to camera frames -> one PoseEstimate per object found.

With depth (the robot's usual case, ``depth_search``): the table-top search of
:mod:`~selfpose_core.estimate.tabletop_search` finds the objects standing on the support plane (proposals from
depth, identity from the bundle's appearance model, resting-pose hypotheses refined by ICP and verified by
render-and-compare; its score is the published confidence). Objects it does not find (off the table, merged
with a neighbour) keep the learned RGB path's estimate below, refined on the depth and re-scored by the same
verification. Without depth (or ``use_depth: false``) only the RGB path runs.

RGB path per frame: resize the image to the detector's width (any frame size; the aspect ratio is kept), detect
each object (heatmap peak per class), cut a square crop around each amodal box from the full-resolution image,
run the pose network on all crops in one batch, and turn its output into a pose by PnP-RANSAC in the crop's
camera (keypoints: the 9 attention-averaged keypoints; correspondences: the confident foreground pixels'
object coordinates). With depth (and ``refine_depth``), ICP on the masked depth refines the pose.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from selfpose_core.data.crops import crop_affine, project_points, square_box
from selfpose_core.errors import ConfigError, ModelError, SelfposeError
from selfpose_core.estimate.depth_refine import DepthRefineConfig, DepthRefiner
from selfpose_core.estimate.dual_scale_views import DualScaleViews, dual_scale_estimate
from selfpose_core.estimate.tabletop_search import SearchConfig, TabletopSearch
from selfpose_core.geometry.pnp import solve_pnp, solve_pnp_ransac
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.backbones import pixel_centres
from selfpose_core.models.bundle import ModelBundle
from selfpose_core.models.keypoint_net import KeypointNet
from selfpose_core.types import CameraIntrinsics, Frame, ObjectModel, PoseEstimate

log = logging.getLogger(__name__)


@dataclass(slots=True)
class EstimatorConfig:
    detector_threshold: float | None = None  # detector score a detection needs; None = the bundle's
    crop_padding: float = 1.3
    mask_threshold: float = 0.5
    max_coord_error: float = 0.25  # correspondence net: keep pixels whose predicted error is below this
    pnp_threshold: float = 0.06  # RANSAC inlier threshold, fraction of the crop size
    pnp_iterations: int = 50  # RANSAC iterations (correspondence network)
    refine_depth: bool = True
    use_depth: bool = True  # False: ignore the frames' depth (RGB only)
    depth_search: bool = True  # with depth: the table-top search (module docstring)
    search: SearchConfig = field(default_factory=SearchConfig)
    dual_scale: str = "auto"  # DSC's two-scale ensemble: auto = when the bundle was adapted by dual_scale; on; off
    return_masks: bool = True
    num_threads: int | None = None  # torch intra-op threads; None leaves torch's setting


class PoseEstimator:
    """``PoseEstimator(bundle_path).estimate(frame) -> list[PoseEstimate]`` (one per detected object, by score).

    ``objects_config`` overrides the bundle's objects.yaml; every bundle object must be in it (by name, with the
    same obj_id and diameter), else :class:`ModelError`.
    """

    def __init__(self, bundle_path: str | Path, device: str = "cpu", *, objects_config: str | Path | None = None,
                 config: EstimatorConfig | None = None, bundle: ModelBundle | None = None) -> None:
        self.config = validate_config(config or EstimatorConfig())
        if self.config.num_threads:
            torch.set_num_threads(int(self.config.num_threads))
        self.device = torch.device(device)
        self.bundle = bundle if bundle is not None else ModelBundle.load(bundle_path, device=self.device)
        self.spec = self.bundle.spec
        self.detector = self.bundle.detector.to(self.device).eval().to(memory_format=torch.channels_last)
        self.pose_net = self.bundle.pose_net.to(self.device).eval().to(memory_format=torch.channels_last)
        self.models = self._check_objects(Path(objects_config) if objects_config else self.bundle.objects_config_path(),
                                          Path(bundle_path))
        self.refiners = [DepthRefiner(m, DepthRefineConfig()) for m in self.models]
        self.search = TabletopSearch(self.models, self.bundle.appearance, self.config.search) \
            if self.config.depth_search and self.config.use_depth else None
        thr = self.config.detector_threshold
        self.detector_threshold = float(self.spec.detector.score_threshold if thr is None else thr)
        self.crop_size = int(self.spec.pose_net.crop_size)
        self.stride = int(self.spec.pose_net.backbone.out_stride)
        h = self.crop_size // self.stride
        self._centres = pixel_centres(h, h, self.stride).reshape(-1, 2).numpy().astype(np.float64)
        self.dual_scale = self._dual_scale_views(Path(bundle_path))

    def _dual_scale_views(self, bundle_path: Path) -> DualScaleViews | None:
        """The two views of DSC's inference ensemble, or None when it is off: with ``dual_scale: auto`` it is on for
        bundles adapted by the ``dual_scale`` stage, with that stage's views (``on`` without one: DSC's views)."""
        stages = [st for st in self.spec.provenance.get("stages", []) if st.get("stage") == "dual_scale"]
        if self.config.dual_scale == "off" or (self.config.dual_scale == "auto" and not stages):
            return None
        return DualScaleViews.of_stage(stages[-1], f"{bundle_path}/bundle.yaml") if stages else DualScaleViews()

    def _check_objects(self, path: Path, bundle_path: Path) -> list[ObjectModel]:
        if not path.is_file():
            raise ModelError(f"model bundle {bundle_path}: objects config {path} does not exist "
                             "(pass the objects.yaml the bundle was trained for)")
        try:
            models = {m.name: m for m in load_objects_config(path)}
        except SelfposeError as exc:
            raise ModelError(f"model bundle {bundle_path}: cannot load its objects config: {exc}") from exc
        out = []
        for i, o in enumerate(self.spec.objects):
            m = models.get(o.name)
            if m is None:
                raise ModelError(f"object {o.name!r} (objects[{i}] of {bundle_path}/bundle.yaml) is missing from "
                                 f"{path} (it has: {', '.join(sorted(models)) or 'nothing'})")
            if m.obj_id != o.obj_id:
                raise ModelError(f"object {o.name!r}: obj_id is {m.obj_id} in {path} but {o.obj_id} in "
                                 f"{bundle_path}/bundle.yaml")
            if abs(m.diameter - o.diameter) > 0.02 * o.diameter:
                raise ModelError(f"object {o.name!r}: the mesh in {path} has diameter {m.diameter:.4f} m but the "
                                 f"bundle was trained for {o.diameter:.4f} m (a different mesh or units)")
            out.append(m)
        return out

    @property
    def object_names(self) -> list[str]:
        return [o.name for o in self.spec.objects]

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the detector on an (H, W, 3) uint8 image: scores (C,) and amodal boxes (C, 4) in image pixels."""
        H, W = rgb.shape[:2]
        dw = int(self.spec.detector.input_width)
        dh = max(8, int(round(H * dw / W)))
        small = cv2.resize(rgb, (dw, dh), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(small).to(self.device).permute(2, 0, 1)[None].float().div_(255.0)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            det = self.detector.decode(self.detector(x))
        scale = np.array([W / dw, H / dh, W / dw, H / dh])
        return det.scores[0].cpu().numpy(), det.boxes[0].cpu().numpy().astype(np.float64) * scale

    def estimate(self, frame: Frame) -> list[PoseEstimate]:
        """Poses of the objects visible in ``frame``, best score first (an empty list when none is found)."""
        if not self.config.use_depth and frame.depth is not None:
            frame = replace(frame, depth=None)
        learned = self._estimate_rgb(frame)
        if self.search is None or frame.depth is None:
            return learned if self.config.return_masks else [replace(e, mask=None) for e in learned]
        names = self.object_names
        # the learned poses join the resting-pose hypotheses of the proposals they fall into
        found = self.search.search(frame, {names.index(e.object_name): e.T_cam_obj[None] for e in learned})
        out = [PoseEstimate(names[f.obj_index], f.T_cam_obj, f.confidence, self.spec.objects[f.obj_index].obj_id,
                            f.box, f.mask if self.config.return_masks else None) for f in found]
        have = {f.obj_index for f in found}
        # objects the search did not find: the learned pose, scored by the same verification
        missing = [e for e in learned if names.index(e.object_name) not in have]
        fits = self.search.verify(frame, [(names.index(e.object_name), e.T_cam_obj, e.mask) for e in missing])
        for est, fit in zip(missing, fits):
            out.append(replace(est, score=float(est.score) * fit, mask=est.mask if self.config.return_masks else None))
        return sorted(out, key=lambda e: -e.score)

    def _estimate_rgb(self, frame: Frame) -> list[PoseEstimate]:
        """The learned path: detector, pose network, PnP (+ ICP on the depth when the frame has some)."""
        rgb = frame.rgb
        H, W = rgb.shape[:2]
        scores, boxes = self.detect(rgb)
        keep = [k for k in np.argsort(-scores) if scores[k] >= self.detector_threshold
                and boxes[k][2] > boxes[k][0] and boxes[k][3] > boxes[k][1]]
        if not keep:
            return []
        s = self.crop_size
        crop_boxes = [square_box(boxes[k], self.config.crop_padding) for k in keep]
        crops = np.stack([cv2.warpAffine(rgb, crop_affine(b, s), (s, s), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT) for b in crop_boxes])
        x = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        x = x.contiguous(memory_format=torch.channels_last)
        idx = torch.as_tensor(keep, dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            out = self.pose_net(x, idx)
            mask_prob = torch.sigmoid(out["mask_logits"])
            fg = mask_prob > self.config.mask_threshold
            # Eq. 3 over the predicted foreground; a crop whose mask is empty falls back to the soft mask
            empty = (fg.flatten(1).sum(1) == 0).view(-1, 1, 1)
            weights = torch.where(empty, mask_prob, fg.to(mask_prob.dtype))
            kps = KeypointNet.keypoints(out, weights).cpu().numpy() if isinstance(self.pose_net, KeypointNet) else None
        mask_prob_np = mask_prob.cpu().numpy()
        results = []
        for j, k in enumerate(keep):
            K_crop = frame.K.crop_resize(tuple(crop_boxes[j]), s).K
            if kps is not None:
                pose = self._pose_from_keypoints(kps[j], k, K_crop)
            else:
                pose = self._pose_from_coords({n: v[j] for n, v in out.items()}, mask_prob_np[j], k, K_crop)
            if self.dual_scale is not None:
                pose = self._dual_scale_pose(rgb, frame.K, boxes[k], k, pose)
            if pose is None:
                continue
            T, quality, inliers = pose
            fgp = mask_prob_np[j][mask_prob_np[j] > self.config.mask_threshold]
            mask_conf = float(fgp.mean()) if fgp.size else 0.0
            full_mask = None
            if self.config.return_masks or self.search is not None or \
                    (self.config.refine_depth and frame.depth is not None):
                m = (mask_prob_np[j] > self.config.mask_threshold).astype(np.uint8)
                full_mask = cv2.warpAffine(m, crop_affine(crop_boxes[j], m.shape[0]), (W, H),
                                           flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                           borderMode=cv2.BORDER_CONSTANT).astype(bool)
            if self.config.refine_depth and frame.depth is not None and full_mask is not None:
                # ICP on the crop window only (the mask is empty elsewhere); K shifted to the window's origin
                x0, y0, x1, y1 = np.clip(np.round(crop_boxes[j]).astype(int), 0, [W, H, W, H])
                K_win = frame.K.K.copy()
                K_win[0, 2] -= x0
                K_win[1, 2] -= y0
                T, _ = self.refiners[k].refine(T, frame.depth[y0:y1, x0:x1], K_win, full_mask[y0:y1, x0:x1])
            o = self.spec.objects[k]
            results.append(PoseEstimate(o.name, T, float(scores[k]) * quality * mask_conf, o.obj_id,
                                        tuple(float(v) for v in boxes[k]), full_mask, None, int(inliers)))
        return results

    def _dual_scale_pose(self, rgb: np.ndarray, K: CameraIntrinsics, box: np.ndarray, k: int,
                         single: tuple[np.ndarray, float, int] | None) -> tuple[np.ndarray, float, int] | None:
        """DSC's ensemble (Sec. 4.3) around the detector box: keypoints (or correspondences) of the un-normalised
        and the normalised view combined in the image, one PnP; the single-view ``single`` when it fails."""
        res = dual_scale_estimate(self.pose_net, self.spec.objects, rgb, K, box, k,
                                  context_fraction=self.dual_scale.context_fraction,
                                  padding=self.dual_scale.padding, mask_threshold=self.config.mask_threshold,
                                  pnp_threshold=self.config.pnp_threshold)
        if res is None:
            return single
        quality = single[1] if single is not None else 0.5
        return res[0], quality, int(res[1]["inliers"])

    def _pose_from_keypoints(self, kp: np.ndarray, k: int, K_crop: np.ndarray) -> tuple[np.ndarray, float, int] | None:
        """EPnP + LM on all 9 keypoints (DSC-PoseNet's PnP); inliers are those reprojected within the threshold."""
        pts3d = self.spec.objects[k].keypoints
        if not np.all(np.isfinite(kp)):
            return None
        res = solve_pnp(pts3d, kp.astype(np.float64), K_crop)
        if not res.success:
            return None
        T = res.T_cam_obj
        uv = project_points(K_crop, T, pts3d)
        inliers = int(np.sum(np.linalg.norm(uv - kp, axis=1) < self.config.pnp_threshold * self.crop_size))
        return T, inliers / len(pts3d), inliers

    def _pose_from_coords(self, out: dict[str, torch.Tensor], mask_prob: np.ndarray, k: int,
                          K_crop: np.ndarray) -> tuple[np.ndarray, float, int] | None:
        o = self.spec.objects[k]
        coords = out["coords"].cpu().numpy().reshape(3, -1).T.astype(np.float64)
        err = out["error"].cpu().numpy().reshape(-1)
        fg = mask_prob.reshape(-1) > self.config.mask_threshold
        sel = fg & (err < self.config.max_coord_error)
        if sel.sum() < 8:
            sel = fg
        if sel.sum() < 6:
            return None
        pts3d = coords[sel] * o.coord_half_extent + o.coord_centre
        res = solve_pnp_ransac(pts3d, self._centres[sel], K_crop,
                               reprojection_threshold=self.config.pnp_threshold * self.crop_size,
                               iterations=self.config.pnp_iterations, min_inliers=6)
        if not res.success:
            return None
        return res.T_cam_obj, len(res.inliers) / int(sel.sum()), len(res.inliers)


def validate_config(config: EstimatorConfig) -> EstimatorConfig:
    """Raise ConfigError naming the field when an estimator setting is out of range."""
    for key in ("crop_padding", "pnp_threshold", "max_coord_error"):
        if not getattr(config, key) > 0:
            raise ConfigError(f"estimator.{key} must be > 0, got {getattr(config, key)}")
    if not 0 < config.mask_threshold < 1:
        raise ConfigError(f"estimator.mask_threshold must be in (0, 1), got {config.mask_threshold}")
    config.search.validate("estimator.search")
    if config.dual_scale not in ("auto", "on", "off"):
        raise ConfigError(f"estimator.dual_scale must be auto, on or off, got {config.dual_scale!r}")
    return config
