"""The layer contract of `.importlinter` holds: lower layers never import higher ones, the core never imports ROS."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from importlinter import api

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".importlinter"


def _layer_names() -> set[str]:
    contracts = api.read_configuration(str(CONFIG))["contracts_options"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    return {name.strip() for line in layers for name in line.replace(":", "|").split("|")}


def test_every_core_package_and_module_has_a_layer():
    core = ROOT / "selfpose_core"
    packages = {p.name for p in core.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in core.glob("*.py") if p.stem != "__init__"}
    assert packages | modules == _layer_names()


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), str(CONFIG), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
