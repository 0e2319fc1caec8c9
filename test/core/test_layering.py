"""The core never imports ROS, and lower layers never import higher ones (DESIGN.md section 2)."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "selfpose_core"
ROS_MODULES = {"rclpy", "rosidl_runtime_py", "message_filters", "cv_bridge", "tf2_ros", "launch", "launch_ros",
               "sensor_msgs", "geometry_msgs", "std_msgs", "builtin_interfaces", "selfpose_ros"}
# DESIGN.md section 2: inference (estimate) below training (adapt): the estimator never imports adapt/
RANK = {"geometry": 0, "mesh": 0, "render": 1, "data": 2, "models": 3, "estimate": 4, "adapt": 5, "eval": 6, "cli": 7}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_never_imports_ros():
    for path in CORE.rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in ROS_MODULES}
        assert not bad, f"{path} imports ROS modules {bad}"


def test_lower_layers_do_not_import_higher_ones():
    for path in CORE.rglob("*.py"):
        rel = path.relative_to(CORE).parts
        if len(rel) < 2 or rel[0] not in RANK:
            continue
        own = RANK[rel[0]]
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "selfpose_core" and len(parts) > 1 and parts[1] in RANK:
                assert RANK[parts[1]] <= own, f"{path} (layer {rel[0]}) imports higher layer {name}"
