"""The ROS package around the nodes: package.xml, msg/, CMakeLists.txt, launch files, parameter files, entry
points, and the nodes' imports — checked without ROS."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from catkin_pkg.package import parse_package
from rosbags.typesys import get_types_from_msg

from selfpose_core.errors import ConfigError
from selfpose_ros.command import strip_ros_args
from selfpose_ros.parameters import (ADAPT_SERVER_NODE, COLLECT_NODE, ESTIMATOR_NODE, NODE_PARAMETERS, defaults,
                                     load_node_yaml)

REPO = Path(__file__).resolve().parents[2]
NODES = {"estimator": "selfpose_ros.estimator_node", "collect_sequence": "selfpose_ros.collect_node",
         "adapt": "selfpose_ros.adapt", "selfpose": "selfpose_ros.command",
         "adapt_server": "selfpose_ros.adapt_server_node"}
# Python modules the nodes import -> the ROS package (rosdep key) that provides them
ROS_PYTHON_PACKAGES = {"rclpy": "rclpy", "message_filters": "message_filters", "tf2_ros": "tf2_ros",
                       "rcl_interfaces": "rcl_interfaces", "sensor_msgs": "sensor_msgs",
                       "vision_msgs": "vision_msgs", "visualization_msgs": "visualization_msgs",
                       "diagnostic_msgs": "diagnostic_msgs", "launch": "launch", "launch_ros": "launch_ros",
                       "std_srvs": "std_srvs", "std_msgs": "std_msgs"}


def test_package_xml_is_valid_and_declares_every_dependency():
    pkg = parse_package(REPO / "package.xml")
    pkg.validate()
    assert pkg.name == "selfpose_ros" and pkg.package_format == 3
    assert [e.content for e in pkg.exports if e.tagname == "build_type"] == ["ament_cmake"]
    deps = {d.name for d in pkg.build_depends + pkg.exec_depends + pkg.buildtool_depends}
    assert {"ament_cmake", "ament_cmake_python", "rosidl_default_generators", "rosidl_default_runtime"} <= deps
    assert "rosidl_interface_packages" in [g.name for g in pkg.member_of_groups]
    assert "cv_bridge" not in deps  # images are converted by selfpose's own codec
    imported = set()
    for path in list((REPO / "selfpose_ros").glob("*.py")) + list((REPO / "launch").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
    for module in imported & set(ROS_PYTHON_PACKAGES):
        assert ROS_PYTHON_PACKAGES[module] in deps, f"package.xml lacks {ROS_PYTHON_PACKAGES[module]}"
    keys = {d.name for d in pkg.exec_depends}
    for key in ("python3-numpy", "python3-scipy", "python3-opencv", "python3-yaml", "python3-torch",
                "python3-rosbags-pip", "python3-trimesh-pip", "python3-kornia-pip", "python3-open3d-pip"):
        assert key in keys


def test_msg_files_parse_and_match_the_documented_fields():
    pose = get_types_from_msg((REPO / "msg" / "ObjectPose.msg").read_text(), "selfpose_ros/msg/ObjectPose")
    fields = dict(pose["selfpose_ros/msg/ObjectPose"][1])
    assert list(fields) == ["name", "id", "pose", "confidence", "covariance", "inliers", "roi"]
    assert fields["covariance"][1][0][1][0] == "float64" and fields["covariance"][1][1] == 36
    assert fields["roi"][1] == "sensor_msgs/msg/RegionOfInterest"
    arr = get_types_from_msg((REPO / "msg" / "ObjectPoseArray.msg").read_text(), "selfpose_ros/msg/ObjectPoseArray")
    afields = dict(arr["selfpose_ros/msg/ObjectPoseArray"][1])
    assert afields["header"][1] == "std_msgs/msg/Header"
    assert afields["objects"][1][0][1] == "selfpose_ros/msg/ObjectPose"


def test_adapt_action_parses_and_carries_the_job_fields():
    from dataclasses import fields as dc_fields

    from selfpose_ros.adapt_job import AdaptGoal, Progress
    goal, result, feedback = ((REPO / "action" / "Adapt.action").read_text().split("\n---\n"))
    parts = {}
    for name, text in (("Goal", goal), ("Result", result), ("Feedback", feedback)):
        types = get_types_from_msg(text, f"selfpose_ros/action/Adapt_{name}")
        parts[name] = dict(types[f"selfpose_ros/action/Adapt_{name}"][1])
    assert set(parts["Goal"]) == {f.name for f in dc_fields(AdaptGoal)} - {"device"}  # device: a node parameter
    assert set(parts["Feedback"]) == {f.name for f in dc_fields(Progress)}
    assert {"success", "bundle", "report", "message", "figure_names", "figure_values"} == set(parts["Result"])
    assert parts["Goal"]["overrides"][1][0][1][0] == "string" and parts["Feedback"]["loss"][1][0] == "float64"


def test_cmakelists_generates_the_messages_and_installs_the_executables():
    text = (REPO / "CMakeLists.txt").read_text()
    for msg in list((REPO / "msg").glob("*.msg")) + list((REPO / "action").glob("*.action")):
        assert f'"{msg.parent.name}/{msg.name}"' in text
    for exe, module in NODES.items():
        assert f'"{exe}={module}"' in text
        assert callable(getattr(importlib.import_module(module), "main", None)) if module.endswith(("adapt", "command")) \
            else \
            "def main(" in (REPO / (module.replace(".", "/") + ".py")).read_text()
    assert "ament_python_install_package(selfpose_core)" in text
    assert re.search(r"install\(DIRECTORY launch config DESTINATION share/\$\{PROJECT_NAME\}\)", text)
    setup = (REPO / "setup.py").read_text()
    for exe, module in NODES.items():
        assert f"{module}:main" in setup or (exe == "selfpose" and "selfpose = selfpose_core.cli.main:main" in setup)


def launch_overrides(path: Path) -> dict[str, tuple]:
    """The OVERRIDES table of a launch file (argument -> (parameter, type, default, help)) without importing it."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "OVERRIDES":
            return {k.value: tuple(getattr(e, "value", getattr(e, "id", None)) for e in v.elts)
                    for k, v in zip(node.value.keys, node.value.values)}
    raise AssertionError(f"{path} has no OVERRIDES table")


@pytest.mark.parametrize("launch_file,node,config", [("estimator.launch.py", ESTIMATOR_NODE, "estimator.yaml"),
                                                     ("collect.launch.py", COLLECT_NODE, "collect.yaml")])
def test_launch_files_compile_and_name_only_existing_parameters_and_files(launch_file, node, config):
    path = REPO / "launch" / launch_file
    source = path.read_text()
    compile(source, str(path), "exec")
    known = defaults(NODE_PARAMETERS[node])
    types = {"str": str, "bool": bool, "int": int, "float": float}
    for arg, (param, kind, default, _) in launch_overrides(path).items():
        assert param in known, f"{launch_file}: {arg} sets unknown parameter {param}"
        assert types[kind] is type(known[param])
        assert isinstance(default, str)
    for name in re.findall(r'"([\w.]+\.yaml)"', source):
        assert (REPO / "config" / name).is_file(), f"{launch_file} names config/{name}, which does not exist"
    assert f'"{config}"' in source and f'name="{node}"' in source
    executables = re.findall(r'executable="(\w+)"', source)
    assert executables and set(executables) <= set(NODES)


def test_config_files_hold_every_parameter_with_its_default(tmp_path):
    for name, node in (("estimator.yaml", ESTIMATOR_NODE), ("collect.yaml", COLLECT_NODE),
                       ("adapt_server.yaml", ADAPT_SERVER_NODE)):
        assert load_node_yaml(REPO / "config" / name, node) == defaults(NODE_PARAMETERS[node])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"{ESTIMATOR_NODE}:\n  ros__parameters:\n    scor_threshold: 0.5\n")
    with pytest.raises(ConfigError, match="scor_threshold is not a parameter"):
        load_node_yaml(bad, ESTIMATOR_NODE)
    bad.write_text(f"{ESTIMATOR_NODE}:\n  ros__parameters:\n    max_rate: 5\n")  # ROS 2 refuses an int here
    with pytest.raises(ConfigError, match="max_rate must be float"):
        load_node_yaml(bad, ESTIMATOR_NODE)


def test_docs_list_every_parameter():
    doc = (REPO / "docs" / "ros.md").read_text()
    for specs in NODE_PARAMETERS.values():
        for p in specs:
            assert f"`{p.name}`" in doc, f"docs/ros.md does not document parameter {p.name}"


def test_adapt_entry_point_passes_arguments_to_selfpose_adapt(monkeypatch):
    import selfpose_ros.adapt as adapt
    calls = []
    monkeypatch.setattr(adapt, "selfpose_main", lambda argv: calls.append(argv) or 0)
    assert adapt.main(["--bag", "b", "--debug", "--ros-args", "-r", "__node:=adapt"]) == 0
    assert calls == [["--debug", "adapt", "--bag", "b"]]
    assert strip_ros_args(["--bag", "b", "--ros-args", "-r", "__node:=x", "--", "--out", "m"]) == \
        ["--bag", "b", "--out", "m"]
    assert strip_ros_args(["--bag", "b", "--ros-args", "-p", "a:=1"]) == ["--bag", "b"]


def test_selfpose_executable_runs_the_selfpose_command(tmp_path, capsys):
    """`ros2 run selfpose_ros selfpose recover BAG` is `selfpose recover BAG` (ROS arguments ignored)."""
    from selfpose_ros.command import main
    assert main(["recover", str(tmp_path / "nothing"), "--ros-args", "-r", "__node:=x"]) == 2
    assert "selfpose recover: error:" in capsys.readouterr().err


def test_selfpose_core_does_not_know_about_rclpy_node_modules():
    for module in ("selfpose_ros.conversions", "selfpose_ros.parameters", "selfpose_ros.adapt",
                   "selfpose_ros.command", "selfpose_ros.input_watch"):
        importlib.import_module(module)  # importable without ROS
