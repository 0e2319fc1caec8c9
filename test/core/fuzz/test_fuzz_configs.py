"""Fuzz: hostile YAML, objects.yaml (with hostile meshes) and model bundles give a SelfposeError (one bounded line)
or a loaded value, cheaply (alias bombs included), and never change the files they read."""
from __future__ import annotations

import copy
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import yaml
from hypothesis import strategies as st

from selfpose_core.config_io import parse_yaml
from selfpose_core.errors import ConfigError
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
from selfpose_core.models.detector import DetectorConfig

from .conftest import MAX_MESSAGE_CHARS, expect_clean, fuzz

_counter = itertools.count()

# random YAML-able values: None, bools, (huge) ints, floats with NaN/inf, text, nested lists and mappings
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                    st.sampled_from(["640x480", "none", "auto", "mm", "m", "keypoint", ".nan", "1e9", "-0"]))
TREES = st.recursive(SCALARS, lambda c: st.one_of(st.lists(c, max_size=5),
                                                  st.dictionaries(st.one_of(st.text(max_size=12), SCALARS), c,
                                                                  max_size=5)), max_leaves=25)


def alias_bomb(width: int, depth: int, key: str) -> str:
    """A YAML "billion laughs": ``depth`` levels, each a list of ``width`` aliases of the level below."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    lines.append(f"{key}: *l{depth - 1}")
    return "\n".join(lines) + "\n"


def _mutations(paths: list[tuple]) -> st.SearchStrategy:
    """Lists of (path into the tree, new value or a deletion) edits."""
    return st.lists(st.tuples(st.sampled_from(paths), st.one_of(st.just("<delete>"), TREES)), min_size=1, max_size=3)


def _apply(tree: dict, edits: list) -> dict:
    tree = copy.deepcopy(tree)
    for path, value in edits:
        node = tree
        for key in path[:-1]:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                node = node[key]
            else:
                node = None
                break
        if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)):
            if value == "<delete>":
                if isinstance(node, dict):
                    node.pop(path[-1], None)
                else:
                    del node[path[-1]]
            else:
                node[path[-1]] = value
    return tree


def _text(draw_tree, base: dict, kind: str, edits: list, bomb: tuple[int, int, str], flips: list) -> str:
    """The file text: the mutated tree, a tree of random values, an alias bomb, duplicate keys or flipped bytes."""
    if kind == "tree":
        return yaml.safe_dump(_apply(base, edits), allow_unicode=True, sort_keys=False)
    if kind == "random":
        return yaml.safe_dump(draw_tree, allow_unicode=True)
    if kind == "bomb":
        return alias_bomb(*bomb)
    text = yaml.safe_dump(base, sort_keys=False)
    if kind == "duplicate":
        return text + text.splitlines()[0] + "\n"
    data = bytearray(text.encode())
    for where, value in flips:
        data[int(where * (len(data) - 1))] ^= value
    return data.decode("utf-8", errors="replace")


KINDS = st.sampled_from(["tree", "tree", "tree", "random", "bomb", "duplicate", "flip"])
BOMBS = st.tuples(st.integers(2, 12), st.integers(2, 10), st.sampled_from(["objects", "image_size", "metrics"]))
FLIPS = st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=5)


# ------------------------------------------------------------------------------------------------- raw YAML
_YAML_TEXT = st.lists(st.sampled_from(list("abc:-[]{},&*!|>'\"#\n \t012.%@`") + ["<<", "&a ", "*a", "---", ": ",
                                                                               "\n  - ", "!!python/object "]),
                      max_size=60).map("".join)


def _yaml_text(text):
    try:
        parse_yaml(text, "fuzz.yaml")
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg and len(msg) < MAX_MESSAGE_CHARS, msg[:300]


test_yaml_text, test_yaml_text_long = fuzz(60, text=_YAML_TEXT)(_yaml_text)


# ------------------------------------------------------------------------------------------------- objects.yaml
@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    """Mesh files a user might point at: fine, millimetres, degenerate, NaN, empty, garbage."""
    root = tmp_path_factory.mktemp("fuzz_meshes")
    box = trimesh.creation.box((0.1, 0.05, 0.08))
    box.export(root / "box.ply")
    trimesh.Trimesh(box.vertices * 1000, box.faces, process=False).export(root / "box_mm.ply")
    trimesh.Trimesh(box.vertices * 0.004, box.faces, process=False).export(root / "tiny.ply")
    flat = box.vertices.copy()
    flat[:, 1:] = 0
    (root / "flat.obj").write_text("".join(f"v {x} {y} {z}\n" for x, y, z in flat)
                                   + "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in box.faces))
    (root / "nan.obj").write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (root / "empty.ply").write_bytes(b"")
    (root / "garbage.glb").write_bytes(b"glTF" + bytes(range(256)) * 4)
    return root


OBJECT_PATHS = [("objects", 0, "symmetry", "discrete", 0, "angle_deg"), ("objects", 0), ("objects", 0, "name"),
                ("objects", 0, "mesh"), ("objects", 0, "units"),
                ("objects", 0, "obj_id"), ("objects", 0, "category"), ("objects", 0, "symmetry"),
                ("objects", 0, "symmetry", "discrete"), ("objects", 0, "symmetry", "discrete", 0),
                ("objects", 0, "symmetry", "discrete", 0, "axis"), ("objects",),
                ("objects", 0, "symmetry", "continuous"),
                ("objects", 0, "extra"), ("objects", 1, "name"), ("objects", 1, "obj_id"), ("extra",)]
OBJECTS_BASE = {"objects": [{"name": "box", "mesh": "box.ply", "units": "auto", "obj_id": 1,
                             "symmetry": {"discrete": [{"axis": [0, 0, 1], "angle_deg": 180}]}},
                            {"name": "other", "mesh": "box_mm.ply", "category": "box"}]}
MESH_NAMES = st.sampled_from(["box_mm.ply", "tiny.ply", "flat.obj", "nan.obj", "empty.ply",
                              "garbage.glb", "missing.ply", "x" * 5000, "a\x00b.ply", "../box.ply", "box.ply"])


def _objects_yaml(meshes, tree, kind, edits, bomb, flips, mesh):
    base = _apply(OBJECTS_BASE, [(("objects", 1, "mesh"), mesh)])
    path = meshes / f"objects_{next(_counter)}.yaml"
    path.write_text(_text(tree, base, kind, edits, bomb, flips), encoding="utf-8")
    expect_clean(lambda: load_objects_config(path), path, meshes / "box.ply")
    path.unlink()


test_objects_yaml, test_objects_yaml_long = fuzz(
    90, tree=TREES, kind=KINDS, edits=_mutations(OBJECT_PATHS), bomb=BOMBS, flips=FLIPS, mesh=MESH_NAMES
)(_objects_yaml)


# ------------------------------------------------------------------------------------------------- bundles
@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    obj = BundleObject("mug", 3, 0.12, np.random.default_rng(0).normal(size=(9, 3)) * 0.05, np.zeros(3),
                       np.full(3, 0.06))
    spec = BundleSpec([obj], "objects.yaml", PoseNetSpec("keypoint", 32, BackboneConfig((8, 8, 16), 2)),
                      DetectorConfig(BackboneConfig((8, 8, 16), 4), 80, 60), (320, 240),
                      {"command": "test", "stages": [{"stage": "pretrain_synthetic", "steps": 3}]})
    path = ModelBundle.create(spec).save(tmp_path_factory.mktemp("fuzz_bundle") / "m")
    ModelBundle.load(path)
    return path


BUNDLE_PATHS = [("objects", 0, "diameter"), ("objects",), ("objects", 0),
                ("objects", 0, "keypoints"), ("objects", 0, "keypoints", 0), ("objects", 0, "obj_id"),
                ("objects", 0, "name"), ("objects", 0, "coord_centre"), ("objects", 0, "coord_half_extent"),
                ("pose_net", "kind"), ("pose_net", "crop_size"), ("pose_net", "widths"), ("pose_net", "widths", 0),
                ("pose_net", "out_stride"), ("pose_net", "num_keypoints"), ("detector", "widths"),
                ("detector", "input_width"), ("detector", "input_height"), ("detector", "score_threshold"),
                ("image_size",), ("image_size", 0), ("provenance",), ("provenance", "stages"), ("metrics",),
                ("objects_config",), ("format_version",)]
WEIGHTS = st.sampled_from(["keep", "keep", "keep", "nan", "list", "empty", "flip", "missing_key", "evil"])


def _write_weights(path: Path, how: str, flips: list) -> None:
    if how == "keep":
        return
    w = torch.load(path, weights_only=True)
    if how == "nan":
        name = next(iter(w["pose_net"]))
        w["pose_net"][name] = torch.full_like(w["pose_net"][name], float("nan"))
        torch.save(w, path)
    elif how == "list":
        torch.save([w["detector"]], path)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing_key":
        torch.save({"detector": w["detector"]}, path)
    elif how == "evil":
        class Evil:
            def __reduce__(self):
                return (print, ("weights.pt ran code",))
        torch.save({"detector": Evil(), "pose_net": w["pose_net"]}, path)
    else:
        data = bytearray(path.read_bytes())
        for where, value in flips:
            data[int(where * (len(data) - 1))] ^= value
        path.write_bytes(bytes(data))


def _bundle(bundle_dir, tree, kind, edits, bomb, flips, weights):
    d = bundle_dir.parent / f"bundle_{next(_counter)}"
    shutil.copytree(bundle_dir, d)
    base = yaml.safe_load((bundle_dir / "bundle.yaml").read_text())
    (d / "bundle.yaml").write_text(_text(tree, base, kind, edits, bomb, flips), encoding="utf-8")
    _write_weights(d / "weights.pt", weights, flips)
    expect_clean(lambda: ModelBundle.load(d), d)
    shutil.rmtree(d)


test_bundle, test_bundle_long = fuzz(
    90, tree=TREES, kind=KINDS, edits=_mutations(BUNDLE_PATHS), bomb=BOMBS, flips=FLIPS, weights=WEIGHTS)(_bundle)


def test_the_memory_bound_holds_cases_to_it():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak RSS is measured on Linux only")
    expect_clean(lambda: _fresh_pages(2**20), max_peak_bytes=32 * 2**20)
    with pytest.raises(AssertionError, match="resident memory rose by"):
        expect_clean(lambda: _fresh_pages(48 * 2**20), max_peak_bytes=32 * 2**20)


def _fresh_pages(n: int) -> None:
    """Make ``n`` bytes of new anonymous memory resident (a bytes object may reuse heap pages already resident)."""
    import mmap

    with mmap.mmap(-1, n) as m:
        for i in range(0, n, mmap.PAGESIZE):
            m[i] = 1
