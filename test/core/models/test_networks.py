"""Networks and losses of the estimator, on small tensors."""
from __future__ import annotations

import pytest
import torch

from selfpose_core.errors import ConfigError, ShapeError
from selfpose_core.models.backbones import BackboneConfig, UNetBackbone, pixel_centres, select_object_channels
from selfpose_core.models.correspondence_net import CorrespondenceNet, CorrespondenceNetConfig
from selfpose_core.models.detector import Detector, DetectorConfig
from selfpose_core.models.keypoint_net import KeypointNet, KeypointNetConfig, attention_keypoints
from selfpose_core.models.losses import centre_heatmap, coordinate_losses, detector_losses, keypoint_losses

SMALL = BackboneConfig(widths=(8, 16, 16), out_stride=2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks train fastest (and steadiest on a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_backbone_output_size_handles_odd_inputs():
    net = UNetBackbone(3, BackboneConfig(widths=(8, 8, 16, 16), out_stride=4))
    assert net(torch.rand(2, 3, 120, 160)).shape == (2, 8, 30, 40)
    assert net(torch.rand(1, 3, 60, 90)).shape == (1, 8, 15, 23)
    with pytest.raises(ConfigError, match="out_stride"):
        UNetBackbone(3, BackboneConfig(widths=(8, 16), out_stride=4))
    with pytest.raises(ShapeError):
        net(torch.rand(3, 32, 32))


def test_pixel_centres_and_channel_selection():
    c = pixel_centres(2, 3, 2)
    assert torch.equal(c[1, 2], torch.tensor([4.5, 2.5]))
    out = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 6, 1, 1).expand(2, 6, 2, 2)
    sel = select_object_channels(out, torch.tensor([2, 0]), 2)
    assert sel[0, :, 0, 0].tolist() == [4.0, 5.0] and sel[1, :, 0, 0].tolist() == [6.0, 7.0]
    with pytest.raises(ShapeError):
        select_object_channels(out, torch.tensor([3, 0]), 2)


def test_attention_keypoints_is_eq3():
    votes = torch.randn(1, 2, 2, 4, 4)
    att = torch.randn(1, 2, 4, 4)
    fg = torch.zeros(1, 4, 4)
    fg[0, 1:3, 1:3] = 1
    kp = attention_keypoints(votes, att, fg)
    w = torch.exp(att) * fg
    expect = (votes * w[:, :, None]).sum(dim=(-1, -2)) / w.sum(dim=(-1, -2))[..., None]
    assert torch.allclose(kp, expect, atol=1e-5)
    # a dominant attention logit selects that pixel's vote
    att2 = torch.zeros(1, 2, 4, 4)
    att2[0, :, 2, 1] = 50.0
    assert torch.allclose(attention_keypoints(votes, att2, fg), votes[0, :, :, 2, 1].unsqueeze(0), atol=1e-4)


def test_keypoint_losses_scale_and_symmetry():
    gt = torch.tensor([[[10.0, 10.0], [20.0, 5.0]]])
    kp = gt + 1.0
    votes = gt.view(1, 2, 2, 1, 1).expand(1, 2, 2, 3, 3).clone()
    fg = torch.ones(1, 3, 3)
    k1, o1 = keypoint_losses(kp, votes, gt, torch.tensor([20.0]), fg, sigma=0.1)
    k2, _ = keypoint_losses(kp, votes, gt, torch.tensor([40.0]), fg, sigma=0.1)
    assert o1.item() == pytest.approx(0.0) and k1.item() > k2.item() > 0
    sym = torch.stack([gt + 30.0, kp], dim=1)  # second symmetry variant matches exactly
    k3, _ = keypoint_losses(kp, votes + 1.0, sym, torch.tensor([20.0]), fg)
    assert k3.item() == pytest.approx(0.0)


def test_coordinate_losses_symmetric_minimum():
    gt = torch.rand(2, 3, 4, 4) * 2 - 1
    sil = torch.ones(2, 4, 4)
    lc, le = coordinate_losses(gt.clone(), torch.zeros(2, 4, 4), torch.stack([-gt, gt], dim=1), sil, sil)
    assert lc.item() == pytest.approx(0.0) and le.item() == pytest.approx(0.0)
    lc2, le2 = coordinate_losses(gt + 0.5, torch.zeros(2, 4, 4), gt, sil, sil)
    assert lc2.item() == pytest.approx(0.5, abs=1e-5) and le2.item() == pytest.approx(0.5, abs=1e-5)


def test_centre_heatmap_peak_and_absence():
    boxes = torch.tensor([[[8.0, 8.0, 24.0, 16.0], [0.0, 0.0, 4.0, 4.0]]])
    heat = centre_heatmap(boxes, torch.tensor([[True, False]]), 8, 8, 4)
    assert heat[0, 0, 3, 4] == 1.0 and heat[0, 0].argmax().item() == 3 * 8 + 4
    assert heat[0, 1].abs().sum() == 0


def _overfit(net, loss_fn, steps=40):
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, loss.item()


def test_keypoint_net_learns_one_sample():
    torch.manual_seed(0)
    net = KeypointNet(2, KeypointNetConfig(backbone=SMALL, num_keypoints=3, crop_size=32))
    img = torch.rand(2, 3, 32, 32)
    idx = torch.tensor([0, 1])
    gt = torch.tensor([[[8.0, 8.0], [20.0, 12.0], [16.0, 26.0]], [[5.0, 25.0], [25.0, 5.0], [16.0, 16.0]]])
    fg = torch.ones(2, 16, 16)

    def loss():
        out = net(img, idx)
        assert out["votes"].shape == (2, 3, 2, 16, 16) and out["attention"].shape == (2, 3, 16, 16)
        k, o = keypoint_losses(net.keypoints(out, fg), out["votes"], gt, torch.tensor([32.0, 32.0]), fg)
        return k + o

    first, last = _overfit(net, loss)
    assert last < 0.3 * first
    net.eval()
    with torch.inference_mode():
        kp = net.keypoints(net(img, idx), fg)
    assert (kp - gt).abs().mean() < 3.0


def test_correspondence_net_shapes_and_ranges():
    net = CorrespondenceNet(3, CorrespondenceNetConfig(backbone=SMALL, crop_size=32)).eval()
    out = net(torch.rand(2, 3, 32, 32), torch.tensor([2, 1]))
    assert out["coords"].shape == (2, 3, 16, 16) and out["mask_logits"].shape == (2, 16, 16)
    assert out["coords"].abs().max() <= 1 and out["error"].min() >= 0


def test_detector_learns_and_decodes_a_box():
    torch.manual_seed(0)
    net = Detector(2, DetectorConfig(backbone=BackboneConfig(widths=(8, 16, 16), out_stride=4)))
    img = torch.zeros(1, 3, 48, 64)
    img[0, :, 12:28, 20:44] = 1.0
    boxes = torch.tensor([[[20.0, 12.0, 44.0, 28.0], [0.0, 0.0, 1.0, 1.0]]])
    present = torch.tensor([[True, False]])
    masks = torch.zeros(1, 2, 12, 16)
    masks[0, 0, 3:7, 5:11] = 1

    def loss():
        return sum(detector_losses(net(img), boxes, present, masks, net.stride).values())

    first, last = _overfit(net, loss, steps=80)
    assert last < 0.3 * first
    net.eval()
    with torch.inference_mode():
        det = net.decode(net(img))
    assert det.scores[0, 0] > 0.3 and det.scores[0, 1] < det.scores[0, 0]
    assert (det.boxes[0, 0] - boxes[0, 0]).abs().max() < 4.0
