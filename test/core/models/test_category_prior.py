"""The SSC-6D shape prior: DeepSDF decoder, SDF samples, training on the harness, latent fitting, marching cubes,
prior files (docs/categories.md, "Shape prior")."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from selfpose_core.data.sdf_samples import SdfSampling, sdf_samples, surface_points
from selfpose_core.data.sim.category_shapes import heldout_instances, instance
from selfpose_core.errors import ConfigError, ModelError, ShapeError
from selfpose_core.eval.shape_metrics import chamfer_distance
from selfpose_core.models.category_prior import (CategoryPrior, LatentFitConfig, fit_latent, latent_regulariser,
                                                 reconstruct_mesh)
from selfpose_core.models.category_prior_training import CategoryPriorConfig, SdfBatches, train_category_prior
from selfpose_core.models.sdf_decoder import SdfDecoder, SdfDecoderConfig
from selfpose_core.models.trainer import TrainerConfig

FIT = LatentFitConfig(steps=100, max_points=512)


def tiny_config(steps: int = 150) -> CategoryPriorConfig:
    """A prior trained in seconds: 6 cans, 32-wide layers."""
    return CategoryPriorConfig(instances=6, decoder=SdfDecoderConfig(width=32),
                               sampling=SdfSampling(surface_points=600, uniform_points=150), shapes_per_batch=6,
                               points_per_shape=256,
                               trainer=TrainerConfig(steps=steps, lr=5e-3, warmup_steps=10, checkpoint_every=10,
                                                     log_every=25, progress=False))


@pytest.fixture(scope="module")
def can_prior(tmp_path_factory):
    out = tmp_path_factory.mktemp("can_prior")
    train_category_prior("can", out, tiny_config())
    return out


def test_decoder_feeds_the_input_again_and_checks_shapes():
    dec = SdfDecoder(SdfDecoderConfig(latent_size=16, width=32, layers=8, latent_in=4))
    assert dec.hidden[3].weight.shape[0] == 32 - 19 and dec.hidden[4].weight.shape[1] == 32
    out = dec(torch.zeros(2, 5, 3), torch.zeros(2, 16))
    assert out.shape == (2, 5) and out.abs().max() < 0.05  # starts inside the training clamp
    with pytest.raises(ShapeError, match="latent must be"):
        dec(torch.zeros(2, 5, 3), torch.zeros(3, 16))
    with pytest.raises(ConfigError, match="decoder.latent_in"):
        SdfDecoderConfig(layers=4, latent_in=4).validate()
    with pytest.raises(ConfigError, match="width"):
        SdfDecoderConfig(latent_size=16, width=19).validate()


def test_sdf_samples_are_signed_distances_of_the_normalised_instance():
    inst = instance("can", 3)
    pts, sdf = sdf_samples(inst, SdfSampling(surface_points=300, uniform_points=3000),
                           np.random.default_rng(0))
    assert pts.shape == (3600, 3) and sdf.shape == (3600,)
    # a can is a cylinder about y: radius and half-height in the normalised frame, from its NOCS size
    r, h = inst.size[0] / 2 / inst.scale, inst.size[1] / 2 / inst.scale
    radial = np.linalg.norm(pts[:, [0, 2]], axis=1)
    deep_inside = (radial < 0.8 * r) & (np.abs(pts[:, 1]) < 0.8 * h)
    far_outside = (radial > 1.2 * r) | (np.abs(pts[:, 1]) > 1.2 * h)
    assert deep_inside.sum() > 20 and far_outside.sum() > 20
    assert (sdf[deep_inside] < 0).all() and (sdf[far_outside] > 0).all()
    surf = surface_points(inst, 500, np.random.default_rng(1))
    assert np.abs(inst.sdf(surf * inst.scale)).max() < 1e-5 and np.linalg.norm(surf, axis=1).max() <= 0.5 + 1e-6


def test_surface_points_leave_out_part_surfaces_inside_the_solid():
    mug = instance("mug", 2)  # its handle's ends lie inside the wall
    surf = surface_points(mug, 2000, np.random.default_rng(0))
    assert (mug.sdf(surf * mug.scale) > -1e-4).all()


class Ellipsoid(nn.Module):
    """A stand-in decoder with a known answer: the (approximate) SDF of an ellipsoid, whatever the latent."""

    def __init__(self, axes: tuple[float, float, float]) -> None:
        super().__init__()
        self.config = SdfDecoderConfig(latent_size=16)
        self.axes = torch.tensor(axes)

    def forward(self, points: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return (torch.linalg.norm(points / self.axes, dim=-1) - 1.0) * self.axes.min()


def test_marching_cubes_mesh_has_the_decoders_axes_and_outward_faces():
    axes = (0.4, 0.2, 0.1)
    prior = CategoryPrior("can", Ellipsoid(axes), torch.zeros(3, 16))  # type: ignore[arg-type]
    mesh = reconstruct_mesh(prior, torch.zeros(16), resolution=64)
    np.testing.assert_allclose(mesh.extents, 2 * np.array(axes), atol=2 * 1.2 / 63)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * np.prod(axes), rel=0.05)  # > 0: faces point outward
    with pytest.raises(ModelError, match="no surface"):
        reconstruct_mesh(CategoryPrior("can", Ellipsoid((2.0, 2.0, 2.0)), torch.zeros(3, 16)),  # type: ignore
                         torch.zeros(16))


def test_prior_reconstructs_a_heldout_can_better_than_the_mean_shape(can_prior):
    prior = CategoryPrior.load(can_prior)
    rng = np.random.default_rng(0)
    inst = heldout_instances("can", 2)[1]  # a flat can, far from the six training cans' mean
    gt = surface_points(inst, 2000, rng)
    mean = chamfer_distance(reconstruct_mesh(prior, prior.mean_latent, 32).sample(2000), gt)
    fitted = fit_latent(prior, gt, FIT, rng)
    fit = chamfer_distance(reconstruct_mesh(prior, fitted.latent, 32).sample(2000), gt)
    assert fit < 0.9 * mean, (fit, mean)
    assert fitted.sdf_loss < 0.02 and fitted.reg_loss == pytest.approx(float(latent_regulariser(fitted.latent, 1.0)))
    # one side only (the points a depth camera in front sees about): still better than the mean shape
    partial = gt[gt[:, 2] > 0]
    fit_partial = chamfer_distance(reconstruct_mesh(prior, fit_latent(prior, partial, FIT, rng).latent, 32)
                                   .sample(2000), gt)
    assert fit_partial < 0.9 * mean, (fit_partial, mean)


def test_fit_refuses_too_few_points(can_prior):
    prior = CategoryPrior.load(can_prior)
    far = np.full((100, 3), 2.0)  # outside the unit sphere: Eq. 4 ignores them
    with pytest.raises(ShapeError, match="at least 16 finite points inside the unit sphere.*got 3"):
        fit_latent(prior, np.concatenate([far, np.zeros((3, 3))]))


def test_prior_files_round_trip_with_provenance(can_prior):
    prior = CategoryPrior.load(can_prior)
    spec = yaml.safe_load((can_prior / "prior.yaml").read_text())
    assert spec["category"] == "can" and spec["latent_size"] == 16 and spec["decoder"]["width"] == 32
    assert spec["training"]["instances"] == 6 and spec["provenance"]["stages"][0]["stage"] == "category_prior"
    assert spec["metrics"]["final_losses"]["sdf_l1"] < 0.02
    weights = torch.load(can_prior / "weights.pt", weights_only=True)
    assert weights["latents"].shape == (6, 16)
    pts = torch.rand(1, 50, 3) - 0.5
    lat = prior.latents[:1]
    assert torch.equal(prior.decoder(pts, lat), CategoryPrior.load(can_prior).decoder(pts, lat))


def test_an_interrupted_training_resumed_gives_the_uninterrupted_prior(tmp_path, monkeypatch):
    full = train_category_prior("can", tmp_path / "a", tiny_config(steps=20))
    original = SdfBatches.__getitem__

    def fail_at_15(self, step):
        if step == 15:
            raise KeyboardInterrupt
        return original(self, step)

    with monkeypatch.context() as m:
        m.setattr(SdfBatches, "__getitem__", fail_at_15)
        with pytest.raises(KeyboardInterrupt):
            train_category_prior("can", tmp_path / "b", tiny_config(steps=20))  # checkpoint at step 10
    assert not (tmp_path / "b" / "prior.yaml").exists()
    assert int(torch.load(tmp_path / "b" / "train" / "checkpoint.pt", weights_only=True)["step"]) == 10
    resumed = train_category_prior("can", tmp_path / "b", tiny_config(steps=20), resume=True)
    assert torch.equal(resumed.latents, full.latents)
    pts = torch.rand(1, 30, 3) - 0.5
    assert torch.equal(resumed.decoder(pts, full.latents[:1]), full.decoder(pts, full.latents[:1]))


def _write(path, text):
    path.write_text(text)


BROKEN = {
    "no weights": (lambda d: (d / "weights.pt").unlink(), "has no weights.pt"),
    "empty weights": (lambda d: _write(d / "weights.pt", ""), r"weights.pt: cannot be loaded safely"),
    "truncated weights": (lambda d: (d / "weights.pt").write_bytes((d / "weights.pt").read_bytes()[:300]),
                          r"weights.pt: cannot be loaded safely"),
    "pickled code": (lambda d: (d / "weights.pt").write_bytes(pickle.dumps(print, protocol=2)),
                     r"weights.pt: cannot be loaded safely"),
    "NaN weights": (lambda d: torch.save({**torch.load(d / "weights.pt", weights_only=True),
                                         "latents": torch.full((6, 16), float("nan"))}, d / "weights.pt"),
                    r"tensor 'latents' holds NaN/inf"),
    "latents of another size": (lambda d: torch.save({**torch.load(d / "weights.pt", weights_only=True),
                                                     "latents": torch.zeros(6, 8)}, d / "weights.pt"),
                                r"'latents' must be a float tensor \(instances, 16\), got \(6, 8\)"),
    "wider decoder in yaml": (lambda d: _edit(d, ["decoder", "width"], 64), r"'decoder' weights do not fit"),
    "huge decoder": (lambda d: (_edit(d, ["decoder", "width"], 4096), _edit(d, ["decoder", "layers"], 32)),
                     r"prior.yaml: the decoder described \(width 4096, 32 layers\) has \d+ parameters, more than"),
    "unknown category": (lambda d: _edit(d, ["category"], "teapot"), r"prior.yaml: category must be one of"),
    "latent size mismatch": (lambda d: _edit(d, ["latent_size"], 8), r"latent_size 8 differs"),
    "bad decoder key": (lambda d: _edit(d, ["decoder", "layers"], "eight"), r"prior.yaml: decoder.layers"),
    "format version": (lambda d: _edit(d, ["format_version"], 7), r"format_version 7 is not supported"),
    "yaml list": (lambda d: _write(d / "prior.yaml", "- 1\n"), r"prior.yaml: must hold a mapping"),
    "yaml syntax": (lambda d: _write(d / "prior.yaml", "category: [\n"), r"prior.yaml"),
}


def _edit(d, keys, value):
    spec = yaml.safe_load((d / "prior.yaml").read_text())
    node = spec
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    (d / "prior.yaml").write_text(yaml.safe_dump(spec))


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_prior_gives_one_line_naming_what_is_wrong(can_prior, tmp_path, case):
    import shutil

    d = tmp_path / "prior"
    shutil.copytree(can_prior, d, ignore=shutil.ignore_patterns("train"))
    damage, message = BROKEN[case]
    damage(d)
    with pytest.raises(ModelError, match=message) as info:
        CategoryPrior.load(d)
    assert "\n" not in str(info.value)


def test_missing_prior_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        CategoryPrior.load(tmp_path / "nope")
