"""NOL network: projection geometry, integration, losses, training signal, weights round trip, training sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from selfpose_core.data.nol_training_set import NolTrainingConfig, NolTrainingSets, look_at_rotation
from selfpose_core.errors import ConfigError, ModelError, ShapeError
from selfpose_core.models.nol import (FixedFeatures, NolConfig, NolMesh, NolNet, depth_tolerance, laplacian, load_nol,
                                      nol_losses, project_sources, rasterize_targets, render_source_depth, save_nol,
                                      training_step)
from selfpose_core.render import RenderMesh, render

S = 32


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def training_set() -> dict[str, torch.Tensor]:
    return NolTrainingSets(4, seed=3, config=NolTrainingConfig(crop_size=S, n_sources=4, occlusion_prob=0.0))[1]


def _textured_box():
    """A 10 cm box whose texture is a smooth colour ramp (so bilinear sampling error stays small)."""
    from selfpose_core.data.sim.shapes import box
    part = box((0.1, 0.08, 0.12))
    tex = np.zeros((64, 64, 3), np.float32)
    tex[..., 0] = np.linspace(0, 1, 64)[None]
    tex[..., 1] = np.linspace(0, 1, 64)[:, None]
    tex[..., 2] = 0.5
    mesh = RenderMesh(torch.as_tensor(part.vertices, dtype=torch.float32), torch.as_tensor(part.faces),
                      uv=torch.as_tensor(part.uv, dtype=torch.float32), texture=torch.as_tensor(tex))
    return part, mesh


def _view(direction, dist=0.5, f=110.0):
    T = np.eye(4)
    T[:3, :3] = look_at_rotation(np.asarray(direction, float) / np.linalg.norm(direction), 0.3)
    T[2, 3] = dist
    K = np.array([[f, 0, (S - 1) / 2], [0, f, (S - 1) / 2], [0, 0, 1.0]])
    return T, K


def _stack(views):
    T = torch.as_tensor(np.stack([v[0] for v in views]), dtype=torch.float32)
    K = torch.as_tensor(np.stack([v[1] for v in views]), dtype=torch.float32)
    return T[:, :3, :3], T[:, :3, 3], K


def test_projection_reproduces_the_texture_seen_from_a_new_view():
    part, tmesh = _textured_box()
    nmesh = NolMesh.from_arrays(part.vertices, part.faces)
    src = [_view([1, -1, 1]), _view([-1, -1, 0.5])]
    R, t, K = _stack(src)
    with torch.no_grad():
        out = render(tmesh, R, t, K, (S, S), coords=False, silhouette=False, visibility=False)
    images = out.texture.permute(0, 3, 1, 2).contiguous()
    tgt = [_view([0.2, -1, 0.8])]
    Rt, tt, Kt = _stack(tgt)
    with torch.no_grad():
        truth = render(tmesh, Rt, tt, Kt, (S, S), coords=False, silhouette=False, visibility=False).texture[0]
    raster = rasterize_targets(nmesh, Rt, tt, Kt, (S, S))
    P, valid = project_sources(nmesh, images, R, t, K, render_source_depth(nmesh, R, t, K, (S, S)), out.mask,
                               raster, depth_tol=0.005)
    assert P.shape == (1, 2, 4, S, S) and valid.shape == (1, 2, S, S)
    assert valid.any(1).float().sum() > 0.8 * raster.mask.sum()
    assert not (valid & ~raster.mask[:, None]).any()
    err = (P[0, :, :3] - truth.permute(2, 0, 1)[None]).abs().amax(1)  # (K, H, W)
    assert float(err[valid[0]].median()) < 0.03
    # the face angle channel is a cosine in [0, 1], 0 where invalid
    assert float(P[:, :, 3].min()) >= 0 and float(P[:, :, 3].max()) <= 1
    assert float(P[:, :, 3][~valid].abs().max()) == 0


def test_projection_is_differentiable_in_the_source_pose():
    part, tmesh = _textured_box()
    nmesh = NolMesh.from_arrays(part.vertices, part.faces)
    R, t, K = _stack([_view([1, -1, 1]), _view([-1, -1, 0.5])])
    with torch.no_grad():
        out = render(tmesh, R, t, K, (S, S), coords=False, silhouette=False, visibility=False)
    images = out.texture.permute(0, 3, 1, 2).contiguous()
    Rt, tt, Kt = _stack([_view([0.2, -1, 0.8])])
    raster = rasterize_targets(nmesh, Rt, tt, Kt, (S, S))
    t_var = t.clone().requires_grad_(True)
    P, valid = project_sources(nmesh, images, R, t_var, K, render_source_depth(nmesh, R, t, K, (S, S)), out.mask,
                               raster, depth_tol=0.005)
    P[:, :, :3].sum().backward()
    assert torch.isfinite(t_var.grad).all() and float(t_var.grad.abs().sum()) > 0


def test_project_sources_checks_shapes():
    part, _ = _textured_box()
    nmesh = NolMesh.from_arrays(part.vertices, part.faces)
    R, t, K = _stack([_view([1, -1, 1])])
    raster = rasterize_targets(nmesh, R, t, K, (S, S))
    with pytest.raises(ShapeError, match="masks"):
        project_sources(nmesh, torch.zeros(1, 16, S, S), R, t, K, torch.zeros(1, S, S), torch.zeros(2, S, S, dtype=bool),
                        raster, 0.01)


def test_integration_weights_are_a_softmax_over_valid_sources():
    net = NolNet(NolConfig(crop_size=S))
    C = net.config.projected_channels
    P = torch.rand(2, 3, C, S, S)
    valid = torch.rand(2, 3, S, S) > 0.4
    valid[:, :, :4] = False  # rows nobody sees
    P = P * valid[:, :, None]
    with torch.no_grad():
        out = net.integrate(P, valid)
    w = out["weights"]
    assert torch.allclose(w.sum(1)[out["mask"]], torch.ones(()), atol=1e-5)
    assert float(w[~valid].abs().max()) < 1e-6
    assert not out["mask"][:, :4].any() and float(out["X_D"][:, :, :4].abs().max()) == 0
    avg = net.integrate(P, valid, use_lstm=False)
    expect = P[:, :, :3].sum(1) / valid.sum(1, keepdim=True).clamp_min(1)
    assert torch.allclose(avg["X_D"], expect.clamp(0, 1), atol=1e-6)


def test_losses_are_zero_for_a_perfect_rendering_and_penalise_noise():
    cfg = NolConfig(crop_size=S)
    psi = FixedFeatures()
    target = torch.rand(1, 3, S, S)
    X_S = torch.cat([target, torch.zeros(1, cfg.projected_channels - 3, S, S)], 1)
    mask = torch.ones(1, S, S, dtype=torch.bool)
    perfect = nol_losses({"X_phi": target, "X_S": X_S, "mask": mask}, target, cfg, psi)
    assert float(perfect["l1"]) == 0 and float(perfect["feature"]) == 0
    noisy = target + 0.1 * torch.randn_like(target)
    worse = nol_losses({"X_phi": noisy, "X_S": X_S, "mask": mask}, target, cfg, psi)
    assert float(worse["l1"]) > 0 and float(worse["feature"]) > 0
    flat = torch.ones(1, 2, S, S)
    assert float(laplacian(flat).abs().max()) < 1e-6


def test_training_reduces_the_loss_on_a_fixed_set(training_set):
    torch.manual_seed(0)
    net = NolNet(NolConfig(crop_size=S, train_sources=4))
    psi = FixedFeatures()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        out = training_step(net, training_set, psi)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_weights_round_trip(tmp_path):
    net = NolNet(NolConfig(crop_size=S, lstm_channels=8))
    save_nol(net, tmp_path / "nol.pt", {"command": "test"})
    state = torch.load(tmp_path / "nol.pt", weights_only=True)
    assert state["provenance"]["command"] == "test"
    back = load_nol(tmp_path / "nol.pt")
    assert back.config.lstm_channels == 8
    for a, b in zip(net.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ModelError, match="nol-train"):
        load_nol(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="bad.pt"):
        load_nol(tmp_path / "bad.pt")
    state["state_dict"][next(iter(state["state_dict"]))].fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ModelError, match=r"nan.pt: 'state_dict' entry '.*' is not a tensor of finite values"):
        load_nol(tmp_path / "nan.pt")
    state = torch.load(tmp_path / "nol.pt", weights_only=True)
    state["config"]["encoder_widths"] = [4096] * 4  # about 1 GB of weights, refused before anything is allocated
    torch.save(state, tmp_path / "wide.pt")
    with pytest.raises(ModelError, match=r"wide.pt: its config describes \d+ parameters, more than the 50000000"):
        load_nol(tmp_path / "wide.pt")


def test_config_is_validated():
    with pytest.raises(ConfigError, match="crop_size"):
        NolConfig(crop_size=30).validate()
    with pytest.raises(ConfigError, match="feature_channels"):
        NolConfig(feature_channels=(4, 3)).validate()


def test_training_sets_are_repeatable_and_perturbed_within_table_b1(training_set):
    cfg = NolTrainingConfig(crop_size=S, n_sources=4, occlusion_prob=0.0)
    again = NolTrainingSets(4, seed=3, config=cfg)[1]
    for k, v in training_set.items():
        assert torch.equal(v, again[k]), k
    s = training_set
    assert s["src_images"].shape == (4, 3, S, S) and s["tgt_image"].shape == (3, S, S)
    assert s["src_masks"].any((1, 2)).all() and s["tgt_mask"].any()
    dt = (s["src_T"][:, :3, 3] - s["src_T_true"][:, :3, 3]).abs()
    assert float(dt.max()) <= 0.01 + 1e-6 and float(dt.max()) > 0
    R_err = s["src_T"][:, :3, :3] @ s["src_T_true"][:, :3, :3].transpose(1, 2)
    angle = torch.arccos(((R_err.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1))
    assert float(angle.max()) <= 0.05 * np.sqrt(3) + 1e-4 and float(angle.max()) > 0
    # each mask is the visible object at the true pose or a pseudo mask rendered at the perturbed pose
    mesh = NolMesh(s["vertices"], s["faces"], s["normals"])
    sil_true, sil_pert = (render_source_depth(mesh, T[:, :3, :3], T[:, :3, 3], s["src_K"], (S, S)) > 0
                          for T in (s["src_T_true"], s["src_T"]))
    inside_true = (s["src_masks"] <= sil_true).all(-1).all(-1)
    inside_pert = (s["src_masks"] <= sil_pert).all(-1).all(-1)
    assert bool((inside_true | inside_pert).all())
    assert depth_tolerance(float(s["diameter"])) > 0
