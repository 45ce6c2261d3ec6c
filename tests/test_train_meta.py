"""The bi-level meta step: d(meta loss)/d(phi) is real (finite differences agree)
and the paper release's bug (virtual parameters never substituted) is caught."""

import copy

import numpy as np
import pytest
import torch
from torch.func import functional_call

from mama_augment.train.config import TrainConfig
from mama_augment.train.losses import ContrastiveLoss
from mama_augment.train.meta import MetaWeighting, WeightingNet, normalise_weights, virtual_parameters
from mama_augment.train.models import FeaturesModel
from mama_augment.train.text import HashingTextEncoder
import contextlib

DTYPE = torch.float64


def _setup(meta_params: str, seed: int = 0):
    torch.manual_seed(seed)
    config = TrainConfig(embed_dim=6, head_hidden=12, temporal="attention", logit_scale_init=2.0)
    model = FeaturesModel(video_dim=7, text_encoder=HashingTextEncoder(dim=9), config=config, cache_dir=None)
    with torch.no_grad():  # non-zero attention scores so the trunk matters in "all"
        model.frame_score.weight.normal_(0, 0.5)
    model = model.to(DTYPE)
    g = torch.Generator().manual_seed(seed + 1)

    def batch(n, frames):
        x = torch.randn(n, frames, 7, generator=g, dtype=DTYPE)
        mask = torch.ones(n, frames, dtype=torch.bool)
        mask[0, -1] = False
        return (x, mask), torch.randn(n, 9, generator=g, dtype=DTYPE)

    train_batch, meta_batch = batch(8, 3), batch(5, 2)
    meta = MetaWeighting(hidden=6, meta_lr=1e-3, virtual_lr=0.5, meta_params=meta_params)
    meta.net = meta.net.to(DTYPE)
    with torch.no_grad():  # off the flat start, so every layer of phi gets a gradient
        for p in meta.net.parameters():
            p.normal_(0, 0.5, generator=g)
    criterion = ContrastiveLoss(margin=0.2)
    return model, meta, criterion, train_batch, meta_batch


def _meta_loss(model, meta, criterion, train_batch, meta_batch):
    video, text, scale = model(*train_batch)
    per_sample = criterion(video, text, scale).per_sample
    return meta.meta_loss(model, criterion, per_sample, meta_batch, contextlib.nullcontext)


def _finite_difference(model, meta, criterion, train_batch, meta_batch, h=1e-6):
    grads = []
    for p in meta.net.parameters():
        flat = p.data.view(-1)
        g = torch.zeros_like(flat)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + h
            plus = _meta_loss(model, meta, criterion, train_batch, meta_batch).item()
            flat[i] = old - h
            minus = _meta_loss(model, meta, criterion, train_batch, meta_batch).item()
            flat[i] = old
            g[i] = (plus - minus) / (2 * h)
        grads.append(g)
    return torch.cat(grads)


def _relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("meta_params", ["last", "heads", "all"])
def test_meta_gradient_is_nonzero_and_matches_finite_differences(meta_params):
    model, meta, criterion, train_batch, meta_batch = _setup(meta_params)
    loss = _meta_loss(model, meta, criterion, train_batch, meta_batch)
    analytic = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(meta.net.parameters()))])
    numeric = _finite_difference(model, meta, criterion, train_batch, meta_batch)
    assert numeric.norm() > 1e-6, "the meta loss must depend on phi"
    assert analytic.norm() > 1e-6
    assert _relative_error(analytic, numeric) < 1e-2


def test_unsubstituted_virtual_step_has_no_meta_gradient_and_fails_the_check():
    """The release's bug: theta_hat is computed but the meta loss is evaluated with
    the original theta. Its meta-gradient is zero, far from the true one."""
    model, meta, criterion, train_batch, meta_batch = _setup("last")

    def broken_meta_loss():
        video, text, scale = model(*train_batch)
        per_sample = criterion(video, text, scale).per_sample
        weights = meta.net(per_sample.detach())
        params = {n: p for n, p in model.head.named_parameters()}
        virtual_parameters(params, (weights * per_sample).mean(), meta.virtual_lr)  # computed ...
        mv, mt = meta_batch
        feats = (model.video_features(mv), model.text_features(mt))
        v, t, s = functional_call(model.head, params, feats)  # ... but never substituted
        return criterion(v, t, s).per_sample.mean()

    loss = broken_meta_loss()
    grads = torch.autograd.grad(loss, list(meta.net.parameters()), allow_unused=True)
    broken = torch.cat([
        (torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(meta.net.parameters(), grads)
    ])
    numeric = _finite_difference(model, meta, criterion, train_batch, meta_batch)
    assert broken.norm() < 1e-12
    assert _relative_error(broken, numeric) > 0.5  # the check above would fail on it


def test_step_updates_phi_and_returns_mean_one_weights_without_touching_the_model():
    model, meta, criterion, train_batch, meta_batch = _setup("last")
    before_phi = copy.deepcopy(meta.net.state_dict())
    before_model = copy.deepcopy(model.state_dict())
    video, text, scale = model(*train_batch)
    per_sample = criterion(video, text, scale).per_sample
    result = meta.step(model, criterion, per_sample, meta_batch, contextlib.nullcontext)
    assert any(not torch.equal(before_phi[k], v) for k, v in meta.net.state_dict().items())
    assert all(torch.equal(before_model[k], v) for k, v in model.state_dict().items())
    assert not result.weights.requires_grad
    assert result.weights.mean().item() == pytest.approx(1.0)
    assert result.meta_grad_norm > 0
    # The training graph survives the meta step: the real step can backpropagate.
    ((result.weights * per_sample).mean()).backward()
    assert model.head.logit_scale.grad is not None


def test_weighting_net_shape_and_range():
    flat = WeightingNet(hidden=4)(torch.linspace(0, 20, 5))
    torch.testing.assert_close(flat, torch.full((5,), 0.5))  # neutral start: equal weights
    net = WeightingNet(hidden=4, neutral_init=False)
    out = net(torch.linspace(0, 20, 11))
    assert out.shape == (11,) and torch.all((out > 0) & (out < 1))
    w = normalise_weights(torch.tensor([0.2, 0.4, 0.6]))
    assert w.mean().item() == pytest.approx(1.0)


def test_kmeans_groups_above_the_cap_fit_on_a_sample_and_group_every_caption():
    from mama_augment.train.data import _kmeans_groups

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 10
    features = (centres[np.arange(400) % 4] + rng.normal(size=(400, 8))).astype(np.float32)
    ids = list(range(1000, 1400))
    every = _kmeans_groups(ids, features, count=8, seed=0)
    assert _kmeans_groups(ids, features, count=8, seed=0, cap=400) == every  # at the cap: as ever
    capped = _kmeans_groups(ids, features, count=8, seed=0, cap=100)
    assert sorted(c for group in capped.values() for c in group) == ids
    # Well-separated concepts land in the same groups either way (up to the names).
    def partition(groups):
        return sorted(sorted(g) for g in groups.values())
    assert partition(capped) == partition(every)
