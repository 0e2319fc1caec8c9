"""selfpose_core.geometry: rigid transforms, rotations, projection, alignment, PnP and object symmetries.

Modules (import from them directly; nothing is re-exported here so that importing one stays cheap):
``se3`` (compose, invert, make_T, transform_points, so3/se3 exp/log, interpolate, rotation averaging,
rotation_angle), ``quaternion`` (ROS-order quaternions), ``rotation6d`` (Zhou et al. 6D), ``projection``
(project, unproject, project_box), ``umeyama``, ``pnp`` (OpenCV EPnP + RANSAC + LM), ``pnp_diff``
(differentiable PnP, BPnP-style), ``symmetry`` and ``shapes`` (shape checks). See docs/geometry.md.
"""
