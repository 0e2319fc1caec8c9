"""`selfpose eval`: model mode (with a test double of the estimator), results-file mode, bad input -> exit 2."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from selfpose_core.cli import eval as eval_cli
from selfpose_core.cli.main import main
from selfpose_core.eval.results import read_results, write_results

from ..eval.conftest import NoisyGtEstimator, make_estimates, tiny_bop  # noqa: F401 (tiny_bop is a fixture)


@pytest.mark.parametrize("no_depth", [False, True])
def test_eval_model_writes_results_and_report(tiny_bop, tmp_path, monkeypatch, capsys, no_depth):
    asked = {}

    def load(model, device, dual_scale, use_depth):
        asked["use_depth"] = use_depth
        return NoisyGtEstimator(tiny_bop.dataset, np.random.default_rng(0))

    monkeypatch.setattr(eval_cli, "load_estimator", load)
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tmp_path / "bundle"), "--data", str(tiny_bop.root), "--out", str(out),
                 "--overlays", "2", "--no-progress"] + (["--no-depth"] if no_depth else [])) == 0
    assert asked["use_depth"] is not no_depth
    printed = capsys.readouterr().out
    assert "AD{D|I}%" in printed and "report:" in printed
    assert "wrong_identity" in printed and "rotation failures by error" in printed  # the breakdown
    csv = out / f"selfpose_{tiny_bop.root.name}-test.csv"
    res = read_results(csv, tiny_bop.objects)
    assert len(res) == 12 and all(t >= 0 for t in res.times.values())
    metrics = yaml.safe_load((out / "metrics.yaml").read_text())
    assert metrics["mean"]["ad_di_recall"] == 1.0
    assert len(list(out.glob("overlay_*.png"))) == 2 and (out / "report.html").is_file()


def test_eval_results_file(tiny_bop, tmp_path, capsys):
    csv = tmp_path / "m_tiny-test.csv"
    write_results(csv, make_estimates(tiny_bop))
    out = tmp_path / "out"
    assert main(["eval", "--results", str(csv), "--data", str(tiny_bop.root), "--out", str(out),
                 "--overlays", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.split()[:6] == ["box", "6", "83.3", "50.0", "50.0", "50.0"] for ln in lines)
    assert yaml.safe_load((out / "metrics.yaml").read_text())["mean"]["add_recall"] == pytest.approx(0.25)
    assert not list(out.glob("overlay_*.png"))


def test_bad_input_exits_2(tiny_bop, tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text("scene_id,im_id,obj_id,score,R,t,time\n1,0,7,0.5,1 0 0 0 1 0 0 0 1,0 0 500,-1\n")
    assert main(["eval", "--results", str(csv), "--data", str(tiny_bop.root), "--out", str(tmp_path / "o")]) == 2
    assert "bad.csv:2: obj_id 7 is not an object of the dataset" in capsys.readouterr().err
    assert main(["eval", "--results", str(csv), "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere/test does not exist" in capsys.readouterr().err
    assert main(["eval", "--results", str(tmp_path / "none.csv"), "--data", str(tiny_bop.root),
                 "--out", str(tmp_path / "o")]) == 2
    assert "none.csv does not exist" in capsys.readouterr().err
    write_results(csv, make_estimates(tiny_bop))
    assert main(["eval", "--results", str(csv), "--data", str(tiny_bop.root), "--scenes", "5",
                 "--out", str(tmp_path / "o")]) == 2
    assert "scenes [5] are not in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(tiny_bop.root)])  # neither --model nor --results


@pytest.mark.slow
def test_eval_with_a_real_untrained_bundle(tiny_bop, tmp_path, capsys):
    """The real PoseEstimator plugs into `selfpose eval --model` (an untrained network: only the plumbing counts)."""
    from selfpose_core.mesh.loading import save_mesh
    from selfpose_core.mesh.objects_config import write_objects_config
    from selfpose_core.models.backbones import BackboneConfig
    from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
    from selfpose_core.models.detector import DetectorConfig

    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    for o in tiny_bop.objects:
        save_mesh(o, bundle_dir / f"{o.name}.ply")
    write_objects_config(bundle_dir / "objects.yaml",
                         [{"name": o.name, "mesh": str(bundle_dir / f"{o.name}.ply"), "obj_id": o.obj_id}
                          for o in tiny_bop.objects])
    spec = BundleSpec([BundleObject.from_model(o) for o in tiny_bop.objects], "objects.yaml",
                      PoseNetSpec("keypoint", 32, BackboneConfig((8, 8, 16), 2)),
                      DetectorConfig(BackboneConfig((8, 8, 16), 4), 64, 48, score_threshold=0.0), (64, 48))
    ModelBundle.create(spec).save(bundle_dir)
    out = tmp_path / "out"
    assert main(["eval", "--model", str(bundle_dir), "--data", str(tiny_bop.root), "--out", str(out),
                 "--overlays", "1", "--no-progress"]) == 0
    assert "mean" in capsys.readouterr().out
    metrics = yaml.safe_load((out / "metrics.yaml").read_text())
    assert metrics["mean"]["n_targets"] == 11 and metrics["n_images"] == 6
    res = read_results(out / f"selfpose_{tiny_bop.root.name}-test.csv", tiny_bop.objects)
    assert {e.object_name for ests in res.estimates.values() for e in ests} <= {"box", "can"}
