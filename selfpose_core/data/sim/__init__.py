"""The embedded SMOT-like scene behind `selfpose simulate` (docs/demo_scene.md).

shapes (procedural meshes) -> textures -> catalog (the objects) -> scene (room, table, layout, light) ->
trajectories + odometry (camera paths, drift) -> raycast_renderer (Open3D ray casting) -> camera_effects (the
"real" camera) -> generate (orchestration and output).
"""
