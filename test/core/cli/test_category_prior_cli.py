"""`selfpose category-prior`: writes a loadable prior, refuses to replace one, resumes, names bad options."""
from __future__ import annotations

import yaml

from selfpose_core.cli.main import main
from selfpose_core.models.category_prior import CategoryPrior

TINY = ["--instances", "3", "--set", "decoder.width=32", "--set", "sampling.surface_points=200",
        "--set", "sampling.uniform_points=50", "--set", "shapes_per_batch=3", "--set", "points_per_shape=64",
        "--set", "trainer.checkpoint_every=2", "--no-progress"]


def test_category_prior_command_writes_refuses_and_resumes(tmp_path, capsys):
    out = tmp_path / "mug_prior"
    assert main(["category-prior", "--category", "mug", "--out", str(out), "--steps", "4", *TINY]) == 0
    assert f"wrote mug shape prior {out} (3 instances, latent 16, 4 steps" in capsys.readouterr().out
    prior = CategoryPrior.load(out)
    assert prior.category == "mug" and prior.latents.shape == (3, 16)
    spec_before = (out / "prior.yaml").read_bytes()
    command = yaml.safe_load(spec_before)["provenance"]["command"]
    assert command.startswith(f"selfpose category-prior --category mug --out {out} --instances 3 --steps 4 --set "
                              "decoder.width=32 --set sampling.surface_points=200"), command

    assert main(["category-prior", "--category", "mug", "--out", str(out), "--steps", "4", *TINY]) == 2
    err = capsys.readouterr().err
    assert "already holds a model" in err and "--resume" in err and err.count("\n") == 1
    assert (out / "prior.yaml").read_bytes() == spec_before  # nothing lost

    assert main(["category-prior", "--category", "mug", "--out", str(out), "--steps", "6", "--resume", *TINY]) == 0
    spec = yaml.safe_load((out / "prior.yaml").read_text())
    assert spec["provenance"]["stages"][0]["steps"] == 6


def test_bad_options_are_one_line_exit_2(tmp_path, capsys):
    base = ["category-prior", "--category", "can", "--out", str(tmp_path / "p")]
    for extra, message in ((["--instances", "0"], "category-prior.instances must be an integer in 1..1000000"),
                           (["--set", "decoder.widht=64"], "unknown key 'widht'"),
                           (["--set", "decoder.latent_in=9"], "category-prior.decoder.latent_in"),
                           (["--overwrite", "--resume"], "--overwrite and --resume exclude each other")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "p").exists()
