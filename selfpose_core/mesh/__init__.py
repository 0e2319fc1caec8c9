"""selfpose_core.mesh: object meshes (loading, units, saving, decimation), keypoints, size measures, objects config."""
from __future__ import annotations

from selfpose_core.mesh.keypoints import farthest_point_keypoints
from selfpose_core.mesh.loading import decimate, load_object_model, object_model_from_arrays, save_mesh
from selfpose_core.mesh.measures import bbox_diagonal, mesh_diameter
from selfpose_core.mesh.objects_config import (ObjectEntry, load_objects_config, read_objects_config,
                                               write_objects_config)

__all__ = ["ObjectEntry", "bbox_diagonal", "decimate", "farthest_point_keypoints", "load_object_model",
           "load_objects_config", "mesh_diameter", "object_model_from_arrays", "read_objects_config", "save_mesh",
           "write_objects_config"]
