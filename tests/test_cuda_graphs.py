"""The meta step from its level's inputs (what a CUDA graph captures) is the meta step,
and on CUDA the captured graph replays it."""

import contextlib
import copy

import pytest
import torch

from mama_augment.train.cuda_graphs import GraphedMetaStep, unsupported_reason
from mama_augment.train.meta import MetaWeighting, forward_with_level_inputs
from test_train_meta import _setup


@pytest.mark.parametrize("meta_params", ["last", "heads"])
def test_the_step_from_level_inputs_is_the_step(meta_params):
    model, meta, criterion, train_batch, meta_batch = _setup(meta_params)
    model_b, meta_b = copy.deepcopy(model), copy.deepcopy(meta)
    meta_b.optimizer = torch.optim.Adam(meta_b.net.parameters(), lr=1e-3)
    for _ in range(2):  # two steps: the second starts from Adam state the first made
        video, text, scale = model(*train_batch)
        per_sample = criterion(video, text, scale).per_sample
        a = meta.step(model, criterion, per_sample, meta_batch, contextlib.nullcontext)

        video_b, text_b, scale_b, level_inputs = forward_with_level_inputs(model_b, meta_params, *train_batch)
        torch.testing.assert_close(video_b, video)
        level_meta = meta_b.meta_level_inputs(model_b, meta_batch, contextlib.nullcontext)
        b = meta_b.step_on_level(meta_b.level(model_b), criterion, level_inputs, level_meta, contextlib.nullcontext)
        for name in ("weights", "raw_weights", "meta_loss", "meta_grad_norm"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-10, atol=1e-12)
        for p, q in zip(meta.net.parameters(), meta_b.net.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert float(a.meta_grad_norm) > 0


def test_where_a_graph_cannot_be_used():
    meta = MetaWeighting(meta_params="last")
    assert unsupported_reason(meta, torch.device("cpu"), 1) == "not on CUDA"
    assert unsupported_reason(None, torch.device("cuda"), 1) == "no meta step"
    assert "several processes" in unsupported_reason(meta, torch.device("cuda"), 2)
    assert "all" in unsupported_reason(MetaWeighting(meta_params="all"), torch.device("cuda"), 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("meta_params", ["last", "heads"])
def test_the_captured_meta_step_replays_the_eager_one(meta_params):
    model, meta, criterion, train_batch, meta_batch = _setup(meta_params)
    device = torch.device("cuda")
    model = model.float().to(device)
    to = lambda x: tuple(t.to(device).float() if t.is_floating_point() else t.to(device) for t in x)  # noqa: E731
    train_batch = (to(train_batch[0]), train_batch[1].float().to(device))
    meta_batch = (to(meta_batch[0]), meta_batch[1].float().to(device))
    graphed_meta = MetaWeighting(hidden=6, meta_lr=1e-3, virtual_lr=0.5, meta_params=meta_params, device=device)
    graphed_meta.net.load_state_dict({k: v.float() for k, v in meta.net.state_dict().items()})
    eager_meta = copy.deepcopy(graphed_meta)
    graphed = GraphedMetaStep(graphed_meta, None)
    for step in range(5):
        _, _, _, level_inputs = forward_with_level_inputs(model, meta_params, *train_batch)
        g = graphed.step(model, criterion, level_inputs, meta_batch, contextlib.nullcontext)
        level_meta = eager_meta.meta_level_inputs(model, meta_batch, contextlib.nullcontext)
        e = eager_meta.step_on_level(eager_meta.level(model), criterion, level_inputs, level_meta,
                                     contextlib.nullcontext)
        torch.testing.assert_close(g.weights, e.weights, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g.meta_loss, e.meta_loss, rtol=1e-4, atol=1e-5)
    assert graphed.disabled is None and graphed.graph is not None
    for p, q in zip(graphed_meta.net.parameters(), eager_meta.net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
