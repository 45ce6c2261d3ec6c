"""The subtractive angular margin loss: mu = 0 is InfoNCE, and the margin shrinks
the pull on positives exactly as the closed form in docs/method.md ("The loss") says."""

import math

import pytest
import torch
import torch.nn.functional as F

from mama_augment.train.losses import ContrastiveLoss, build_loss, margin_logits


def _embeddings(n=6, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    t = F.normalize(v + 0.8 * torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    return v.requires_grad_(), t.requires_grad_()


def _infonce(v, t, scale):
    logits = scale * v @ t.T
    labels = torch.arange(len(v))
    return F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.T, labels, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_margin_zero_equals_infonce_values_and_gradients(dtype):
    v, t = _embeddings(dtype=dtype)
    scale = torch.tensor(14.3, dtype=dtype)
    ours = build_loss("mama", margin=0.0)(v, t, scale).per_sample
    reference = _infonce(v, t, scale)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, reference, rtol=tol, atol=tol)
    g_ours = torch.autograd.grad(ours.sum(), (v, t))
    g_ref = torch.autograd.grad(reference.sum(), (v, t))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    torch.testing.assert_close(build_loss("infonce", margin=0.3)(v, t, scale).per_sample, reference, rtol=tol, atol=tol)


def test_margin_matches_the_arccos_definition_on_positives_only():
    v, t = _embeddings(seed=1)
    scale, mu, eps = torch.tensor(20.0, dtype=torch.float64), 0.25, 1e-6
    out = ContrastiveLoss(margin=mu, eps=eps)(v, t, scale)
    s = v @ t.T
    theta = torch.arccos(s.clamp(-1 + eps, 1 - eps))
    eye = torch.eye(len(v), dtype=torch.bool)
    logits = torch.where(eye, scale * torch.cos(theta - mu), scale * s)  # negatives: no margin
    labels = torch.arange(len(v))
    expected = F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.T, labels, reduction="none")
    torch.testing.assert_close(out.per_sample, expected, rtol=1e-10, atol=1e-10)
    assert out.loss.item() == pytest.approx(expected.mean().item())
    assert set(out.terms) >= {"loss_video_to_text", "loss_text_to_video", "positive_angle"}


def _loss_of_angles(theta, off_diagonal, scale, mu):
    """Per-sample loss when the positives' angles are ``theta`` and negatives fixed."""
    similarity = off_diagonal.clone()
    similarity = similarity + torch.diag(torch.cos(theta) - torch.diagonal(off_diagonal))
    logits_vt = margin_logits(similarity, scale, mu)
    logits_tv = margin_logits(similarity.T, scale, mu)
    labels = torch.arange(len(theta))
    per_sample = F.cross_entropy(logits_vt, labels, reduction="none") + F.cross_entropy(logits_tv, labels, reduction="none")
    return per_sample, logits_vt, logits_tv


def test_gradient_on_positive_angle_follows_closed_form_and_is_smaller_than_infonce():
    g = torch.Generator().manual_seed(3)
    n, scale, mu = 5, torch.tensor(30.0, dtype=torch.float64), 0.3
    off = torch.empty(n, n, dtype=torch.float64).uniform_(-0.3, 0.5, generator=g)
    theta0 = torch.tensor([0.45, 0.6, 0.8, 1.0, 1.2], dtype=torch.float64)  # all beyond the margin

    theta = theta0.clone().requires_grad_()
    per_sample, z_vt, z_tv = _loss_of_angles(theta, off, scale, mu)
    (grad_margin,) = torch.autograd.grad(per_sample.sum(), theta)
    p_row = torch.softmax(z_vt, dim=1).diagonal()
    p_col = torch.softmax(z_tv, dim=1).diagonal()
    closed_form = scale * ((1 - p_row) + (1 - p_col)) * torch.sin(theta0 - mu)
    torch.testing.assert_close(grad_margin, closed_form.detach(), rtol=1e-9, atol=1e-12)

    theta_info = theta0.clone().requires_grad_()
    per_sample_info, z_vt0, z_tv0 = _loss_of_angles(theta_info, off, scale, 0.0)
    (grad_info,) = torch.autograd.grad(per_sample_info.sum(), theta_info)
    p_row0 = torch.softmax(z_vt0, dim=1).diagonal()
    p_col0 = torch.softmax(z_tv0, dim=1).diagonal()
    torch.testing.assert_close(grad_info, (scale * ((1 - p_row0) + (1 - p_col0)) * torch.sin(theta0)).detach())
    # Loss grows with the angle (gradient > 0) under both, but the margin pulls less.
    assert torch.all(grad_margin > 0)
    assert torch.all(grad_margin < grad_info)


def test_angle_inside_margin_is_pushed_back_not_pulled_tighter():
    scale, mu = torch.tensor(30.0, dtype=torch.float64), 0.4
    off = torch.full((3, 3), 0.1, dtype=torch.float64)
    theta = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    per_sample, _, _ = _loss_of_angles(theta, off, scale, mu)
    (grad,) = torch.autograd.grad(per_sample.sum(), theta)
    assert torch.all(grad < 0)  # sin(theta - mu) < 0: no pull past the margin


def test_loss_is_finite_at_identical_embeddings():
    v = F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1).requires_grad_()
    out = ContrastiveLoss(margin=0.2)(v, v, torch.tensor(10.0, dtype=torch.float64))
    (grad,) = torch.autograd.grad(out.loss, v)
    assert torch.isfinite(out.loss) and torch.all(torch.isfinite(grad))


def test_negative_margin_is_rejected():
    with pytest.raises(ValueError):
        ContrastiveLoss(margin=-0.1)
    assert math.isclose(build_loss("mama", 0.2).margin, 0.2)


def test_a_registered_loss_gets_what_its_entry_declares(monkeypatch, tmp_path):
    """The meta-weighting and the margin follow the loss's registry entry, not its name:
    registering a loss is all it takes (config, build_loss, the audit of old runs)."""
    import json

    from mama_augment.train.audit import _was_weighted
    from mama_augment.train.config import LOSSES, LossEntry, TrainConfig

    monkeypatch.setitem(LOSSES, "weighted-plain", LossEntry("test: weighted, no margin", takes_meta_weighting=True))
    monkeypatch.setitem(LOSSES, "margin-only", LossEntry("test: margin, not weighted", takes_margin=True))

    weighted = TrainConfig(captions="c.csv", loss="weighted-plain", margin=0.2).validate()
    assert weighted.use_meta_weighting and weighted.meta_weighting_decided_by_data
    assert weighted.effective_margin == 0.0 and build_loss("weighted-plain", 0.2).margin == 0.0
    assert TrainConfig(captions="c.csv", loss="weighted-plain", paper=True).validate().meta_weighting is True

    margin = TrainConfig(captions="c.csv", loss="margin-only", margin=0.2).validate()
    assert not margin.use_meta_weighting and not margin.meta_weighting_decided_by_data
    assert margin.effective_margin == 0.2 and math.isclose(build_loss("margin-only", 0.2).margin, 0.2)
    with pytest.raises(Exception, match="--paper"):
        TrainConfig(captions="c.csv", loss="margin-only", paper=True).validate()

    # A run recorded before the "auto" decision was stored: weighted when its loss takes it.
    for loss, expected in (("weighted-plain", True), ("margin-only", False)):
        run = tmp_path / loss
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"loss": loss, "meta_weighting": None}))
        assert _was_weighted(run) is expected


def test_build_loss_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="unknown loss 'triplet'"):
        build_loss("triplet", 0.1)
