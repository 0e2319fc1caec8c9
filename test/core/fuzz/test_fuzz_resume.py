"""Fuzz: hostile files left to resume from (checkpoint.pt, work/state.yaml, pseudo labels) give a SelfposeError
(one bounded line) or load; a refused checkpoint leaves the modules as they were."""
from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
import torch
import yaml
from hypothesis import strategies as st

from selfpose_core.adapt.pipeline import read_state
from selfpose_core.adapt.pseudo_labels import PseudoInstance, PseudoLabels
from selfpose_core.models.trainer import Trainer, TrainerConfig

from .conftest import expect_clean, fuzz
from .test_fuzz_configs import BOMBS, FLIPS, TREES, _mutations, _text

_counter = itertools.count()
NUMBERS = st.one_of(st.integers(), st.integers(-2 ** 70, 2 ** 70), st.just(10 ** 9), st.just(-1), st.just(3),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.none(), st.booleans())


# ------------------------------------------------------------------------------------------------- checkpoint.pt

def _damaged(data: bytes, how: str, flips) -> bytes:
    """``data`` truncated at the first flip's position (``how == "truncate"``) or with the flips' bytes XOR-ed."""
    out = bytearray(data)
    if how == "truncate":
        del out[int(flips[0][0] * len(out)):]
    else:
        for where, v in flips:
            out[int(where * (len(out) - 1))] ^= v
    return bytes(out)

def _trainer(out):
    torch.manual_seed(0)
    return Trainer({"m": torch.nn.Linear(2, 1)}, out, TrainerConfig(steps=5, progress=False))


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz_ckpt")
    tr = _trainer(out)
    tr.step = 3
    tr.save_checkpoint()
    return out


class _Evil:
    def __reduce__(self):
        return (print, ("checkpoint.pt ran code",))


def _checkpoint_state(how, valid, step, value):
    state = dict(valid)
    if how == "step":
        state["step"] = step
    elif how == "drop":
        state.pop(value if isinstance(value, str) and value in state else "step")
    elif how == "list":
        return [state]
    elif how == "modules":
        state["modules"] = value
    elif how == "nan":
        state["modules"] = {"m": {k: torch.full_like(v, float("nan")) for k, v in valid["modules"]["m"].items()}}
    elif how == "evil":
        state["optimizer"] = _Evil()
    elif how == "tensor_step":
        state["step"] = torch.tensor(step if isinstance(step, int) and abs(step) < 2 ** 62 else 1)
    return state


def _checkpoint(checkpoint_dir, how, step, value, flips):
    d = checkpoint_dir.parent / f"ckpt_{next(_counter)}"
    shutil.copytree(checkpoint_dir, d)
    path = d / "checkpoint.pt"
    if how == "empty":
        path.write_bytes(b"")
    elif how in ("flip", "truncate"):
        path.write_bytes(_damaged(path.read_bytes(), how, flips))
    elif how == "text":
        path.write_text(yaml.safe_dump(value))
    else:
        valid = torch.load(checkpoint_dir / "checkpoint.pt", weights_only=True)
        torch.save(_checkpoint_state(how, valid, step, value), path)
    tr = _trainer(d)
    before = [p.detach().clone() for p in tr.modules["m"].parameters()]
    error = expect_clean(tr.load_checkpoint, d)
    if error is not None:  # refused: nothing restored
        assert all(torch.equal(a, b) for a, b in zip(before, tr.modules["m"].parameters()))
    else:
        assert 0 <= tr.step <= tr.config.steps
    shutil.rmtree(d)


test_checkpoint, test_checkpoint_long = fuzz(
    70, how=st.sampled_from(["step", "drop", "list", "modules", "nan", "evil", "tensor_step", "empty", "flip",
                             "truncate", "text", "keep"]),
    step=NUMBERS, value=TREES, flips=FLIPS)(_checkpoint)


# ------------------------------------------------------------------------------------------------- state.yaml
STATE_BASE = {"done": ["multiview_consensus"],
              "results": {"multiview_consensus": {"losses": {"refine": 0.5}, "artefacts": {"drift": "d.png"},
                                                  "details": {"objects": 3}, "metrics": {}}}}
STATE_PATHS = [("results", "multiview_consensus", "losses"), ("done",), ("done", 0), ("results",),
               ("results", "multiview_consensus"), ("results", "multiview_consensus", "losses", "refine"),
               ("results", "multiview_consensus", "artefacts"), ("results", "multiview_consensus", "details"),
               ("results", "multiview_consensus", "metrics"), ("extra",)]


def _state(tmp_path_factory, tree, kind, edits, bomb, flips):
    path = tmp_path_factory.getbasetemp() / f"state_{next(_counter)}.yaml"
    path.write_text(_text(tree, STATE_BASE, kind, edits, bomb, flips), encoding="utf-8")
    expect_clean(lambda: read_state(path), path)
    path.unlink()


test_state_yaml, test_state_yaml_long = fuzz(
    50, tree=TREES, kind=st.sampled_from(["tree", "tree", "random", "bomb", "duplicate", "flip"]),
    edits=_mutations(STATE_PATHS), bomb=BOMBS, flips=FLIPS)(_state)


# ------------------------------------------------------------------------------------------------- pseudo labels
@pytest.fixture(scope="module")
def pseudo_file(tmp_path_factory):
    T = np.eye(4)
    inst = [PseudoInstance(0, 0, T, np.array([1.0, 2.0, 9.0, 8.0]), 0.9, np.eye(6, 5, dtype=bool), 0.8),
            PseudoInstance(1, 1, T, np.array([0.0, 0.0, 4.0, 4.0]), 0.4, None, 1.0)]
    labels = PseudoLabels(["a", "b"], np.stack([T, np.full((4, 4), np.nan)]), np.array([0.9, 0.0]),
                          np.stack([T, T, T]), np.array([1.0, 0.5, 0.0]), inst)
    path = labels.save(tmp_path_factory.mktemp("fuzz_pseudo") / "pseudo_labels.npz")
    PseudoLabels.load(path)
    return path


ARRAYS = st.one_of(st.just(np.zeros(0)), st.just(np.array([np.nan, np.inf])), st.just(np.array([[1, 2], [3, -4]])),
                   st.just(np.array(["x", "y"])), st.just(np.array([True])), st.just(np.full((2, 4, 4), 2 ** 40)),
                   st.just(np.zeros((2, 4, 4))), st.just(np.array([0, 10 ** 6])), st.just(np.float64(3.0)),
                   st.lists(st.integers(-2 ** 31, 2 ** 31), max_size=6).map(np.array))
KEYS = ["object_names", "T_world_obj", "object_confidence", "T_world_cam", "frame_weight", "frame", "obj_index",
        "T_cam_obj", "box", "confidence", "visib_fract", "has_mask", "mask_shape", "mask_bits", "mask_offsets"]


def _pseudo(pseudo_file, how, key, array, flips):
    path = pseudo_file.parent / f"pseudo_{next(_counter)}.npz"
    if how == "replace" or how == "drop":
        with np.load(pseudo_file) as z:
            d = {k: z[k] for k in z.files}
        if how == "drop":
            d.pop(key)
        else:
            d[key] = array
        with open(path, "wb") as f:
            np.savez(f, **d)
    elif how == "pickle":
        with open(path, "wb") as f:  # a pickled object array: must never be unpickled
            np.save(f, np.array([{"frame": 1}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(_damaged(pseudo_file.read_bytes(), how, flips))
    expect_clean(lambda: PseudoLabels.load(path), path)
    path.unlink()


test_pseudo_labels, test_pseudo_labels_long = fuzz(
    50, how=st.sampled_from(["replace", "replace", "drop", "pickle", "flip", "truncate"]), key=st.sampled_from(KEYS),
    array=ARRAYS, flips=FLIPS)(_pseudo)
