"""The meta-learned loss -> weight function and its bi-level step.

The method: docs/method.md, "The weighting function and the meta step".

One MAMA training step, as :meth:`MetaWeighting.step` does it:

1. per-sample losses ``l_i(theta)`` of the training batch (the caller's forward, kept
   and reused for the real step); weights ``w_i = V(l_i; phi)`` of the detached losses;
2. virtual step ``theta_hat = theta - alpha * grad_theta(sum_i w_i l_i / n)`` with
   ``create_graph=True``, so ``theta_hat`` is a function of ``phi``;
3. meta loss: the unweighted loss of ``theta_hat`` on a meta batch, evaluated with
   ``torch.func.functional_call`` so the virtual parameters really are substituted
   (the paper release's ``set_param`` never did this); ``phi`` takes one optimiser step
   on ``d meta / d phi``;
4. real-step weights ``V(l_i; phi_new)`` without grad, normalised to mean 1; the caller
   backpropagates ``mean(w_i l_i)`` through the step-1 graph.

Cost. The training forward is done once and reused by the meta and real steps.
``meta_params`` picks which parameters take the virtual step, and so how deep the
second-order graph goes:

* ``last`` (default): the last projection layers and the logit scale. The meta
  batch runs through everything below them once, without a graph, and the double
  backward touches only two small matrices;
* ``heads``: the whole projection heads (the trunk is a constant);
* ``all``: every trainable parameter (exact Meta-Weight-Net; for end-to-end models it
  needs attention kernels with a double backward).

Each choice is an exact bi-level step for its parameter subset (the finite-difference
test checks all three); the real step always updates every trainable parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call

from mama_augment.train.config import META_PARAMS


class WeightingNet(nn.Module):
    """V(l; phi) = sigmoid(W2 relu(W1 l + b1) + b2): per-sample loss -> weight in (0, 1).

    With ``inputs=2`` it reads each pair's loss and its agreement (the probability, from
    the cross-fitted agreement score, that the pair is right): V(l, a; phi)."""

    def __init__(self, hidden: int = 100, neutral_init: bool = True, inputs: int = 1, init: str = "neutral"):
        super().__init__()
        if inputs not in (1, 2):
            raise ValueError("the weighting net reads the loss (1 input) or the loss and the agreement (2)")
        if init == "agreement" and inputs != 2:
            raise ValueError("init='agreement' needs the agreement as the second input")
        self.inputs = inputs
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())
        if neutral_init or init == "agreement":
            # Start flat (V = 0.5 for every loss, i.e. plain unweighted training) rather
            # than with the random slope of a default init: on the emoji benchmark that
            # slope up-weighted high losses, and where the meta-gradient is weak it
            # never unlearned it (benchmarks/train_quality.py).
            nn.init.zeros_(self.net[2].weight)
            nn.init.zeros_(self.net[2].bias)
        if init == "agreement":
            # One hidden unit passes the agreement a through (relu(a) = a for a in [0, 1])
            # and the output reads sigmoid(6 a - 3): 0.05 for a pair surely wrong, 0.95 for
            # one surely right, so training starts where the prior would put it; the other
            # units start silent, as in the neutral start.
            with torch.no_grad():
                self.net[0].weight[0].copy_(torch.tensor([0.0, 1.0]))
                self.net[0].bias[0] = 0.0
                self.net[2].weight[0, 0] = 6.0
                self.net[2].bias[0] = -3.0

    def forward(self, losses: torch.Tensor, agreement: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.net[0].weight.dtype
        x = losses.reshape(-1, 1).to(dtype)
        if self.inputs == 2:
            # a pair without a score (meta-set captions, a clean estimate) counts as right
            a = torch.ones_like(x) if agreement is None else agreement.reshape(-1, 1).to(device=x.device, dtype=dtype)
            x = torch.cat([x, a], dim=1)
        return self.net(x).reshape(-1)


def normalise_weights(weights: torch.Tensor, eps: float = 1e-12, world_size: int = 1) -> torch.Tensor:
    """Scale weights to mean 1 over the batch (Meta-Weight-Net divides by their sum;
    mean 1 keeps the loss on the same scale as the unweighted one). On several
    processes the batch is the global one: count and sum are taken over all ranks."""
    if world_size == 1:
        return weights * (weights.numel() / weights.sum().clamp_min(eps))
    from mama_augment.train.distributed import sum_across_ranks

    total = sum_across_ranks(weights.sum(), world_size)
    return weights * (weights.numel() * world_size / total.clamp_min(eps))


def virtual_parameters(
    params: dict[str, torch.Tensor], weighted_loss: torch.Tensor, virtual_lr: float, world_size: int = 1
) -> dict[str, torch.Tensor]:
    """``theta - alpha * grad(weighted_loss)`` keeping the graph to ``phi``.

    On several processes ``weighted_loss`` is this rank's share and the gradient is
    averaged over ranks, differentiably, so every rank holds the global batch's
    ``theta_hat`` and its graph reaches every rank's ``phi``.
    """
    names = list(params)
    grads = torch.autograd.grad(
        weighted_loss, [params[n] for n in names], create_graph=True, retain_graph=True, allow_unused=True
    )
    if world_size > 1:
        from mama_augment.train.distributed import mean_across_ranks_with_grad

        grads = mean_across_ranks_with_grad(grads, world_size)
    return {n: params[n] if g is None else params[n] - virtual_lr * g for n, g in zip(names, grads)}


@dataclass
class MetaStepResult:
    weights: torch.Tensor  # normalised real-step weights (no grad), shape (B,)
    raw_weights: torch.Tensor  # V(l; phi_new) before normalisation (no grad)
    # 0-d tensors, read (which waits for the device) only when a step is logged
    meta_loss: torch.Tensor
    meta_grad_norm: torch.Tensor


class MetaWeighting:
    """The weighting net, its optimiser and the bi-level step.

    ``criterion(video, text, scale) -> LossOutput`` is the training loss; the meta loss
    is the same criterion, unweighted.

    On ``world_size`` processes (rank and world size passed in, as the loss's) each
    rank holds its slice of the training and meta batches; weights are normalised over
    the global batch, the virtual gradient and ``phi``'s gradient are averaged across
    ranks, so ``phi`` stays identical everywhere and equals the one-process ``phi``.
    """

    def __init__(
        self,
        hidden: int = 100,
        meta_lr: float = 1e-3,
        virtual_lr: float = 0.1,
        meta_params: str = "last",
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        agreement_input: bool = False,
        init: str = "neutral",
    ):
        self.rank = rank
        self.world_size = world_size
        self.agreement_input = agreement_input
        self.net = WeightingNet(hidden, inputs=2 if agreement_input else 1, init=init).to(device)
        # capturable: the step can run inside a CUDA graph (its state stays on the GPU)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=meta_lr,
                                          capturable=torch.device(device).type == "cuda")
        self.virtual_lr = virtual_lr
        if meta_params not in META_PARAMS:
            raise ValueError(f"meta_params must be one of {', '.join(META_PARAMS)}")
        self.meta_params = meta_params

    @torch.no_grad()
    def weights(self, losses: torch.Tensor, agreement: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised, raw) weights of detached losses under the current ``phi``.
        ``agreement`` (per pair) is read only by a net with the agreement input."""
        raw = self.net(losses.detach().float(), agreement)
        return normalise_weights(raw, world_size=self.world_size), raw

    def meta_loss(
        self,
        model: nn.Module,
        criterion: Callable,
        per_sample: torch.Tensor,
        meta_inputs: tuple[Any, Any],
        autocast: Callable[[], Any],
        agreement: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Steps 1-3 up to the meta loss, a differentiable function of ``phi``.

        ``per_sample`` carries the graph of the training forward; it is reused, never
        recomputed. The virtual gradient of a parameter subset flows from it without
        entering the layers below that subset.
        """
        return self._virtual_meta_loss(self.level(model), criterion, per_sample,
                                       self.meta_level_inputs(model, meta_inputs, autocast), autocast, agreement)

    def _virtual_meta_loss(self, module: nn.Module, criterion: Callable, per_sample: torch.Tensor, inputs: tuple,
                           autocast: Callable[[], Any], agreement: torch.Tensor | None = None) -> torch.Tensor:
        weights = self.net(per_sample.detach().float(), agreement)
        weighted = (weights * per_sample).mean()
        params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        virtual = virtual_parameters(params, weighted, self.virtual_lr, self.world_size)
        with autocast():
            video, text, scale = functional_call(module, virtual, inputs)
            return criterion(video, text, scale, terms=False).per_sample.mean()

    def level(self, model: nn.Module) -> nn.Module:
        """The module whose parameters take the virtual step: the model, its heads, or
        the heads' last layers (``meta_params`` all, heads, last)."""
        if self.meta_params == "all":
            return model
        return model.head if self.meta_params == "heads" else model.head.out

    def meta_level_inputs(self, model: nn.Module, meta_inputs: tuple[Any, Any], autocast) -> tuple:
        """The meta batch's inputs to :meth:`level`; everything below it runs once,
        without a graph."""
        if self.meta_params == "all":
            return meta_inputs
        meta_video, meta_text = meta_inputs
        with torch.no_grad(), autocast():
            features = (model.video_features(meta_video), model.text_features(meta_text))
            if self.meta_params == "heads":
                return features
            return model.head.bodies(*features)

    def step(
        self,
        model: nn.Module,
        criterion: Callable,
        per_sample: torch.Tensor,
        meta_inputs: tuple[Any, Any],
        autocast: Callable[[], Any],
        agreement: torch.Tensor | None = None,
    ) -> MetaStepResult:
        """Update ``phi`` once and return the real step's weights (no grad)."""
        meta_loss = self.meta_loss(model, criterion, per_sample, meta_inputs, autocast, agreement)
        # retain_graph: the real step backpropagates through the same training forward.
        return self._update(meta_loss, per_sample, retain_graph=True, agreement=agreement)

    def step_on_level(
        self,
        level: nn.Module,
        criterion: Callable,
        train_level_inputs: tuple,
        meta_level_inputs: tuple,
        autocast: Callable[[], Any],
    ) -> MetaStepResult:
        """:meth:`step` from the inputs of :meth:`level` alone (``last``, ``heads``): the
        training batch's losses are recomputed from the detached level inputs, which
        gives the same losses and the same virtual gradient (the parameters below the
        level take no virtual step). Self-contained, so it can be captured as one CUDA
        graph (train/cuda_graphs.py)."""
        with autocast():
            video, text, scale = level(*train_level_inputs)
            per_sample = criterion(video, text, scale, terms=False).per_sample
        meta_loss = self._virtual_meta_loss(level, criterion, per_sample, meta_level_inputs, autocast)
        return self._update(meta_loss, per_sample, retain_graph=False)

    def _update(self, meta_loss: torch.Tensor, per_sample: torch.Tensor, retain_graph: bool,
                agreement: torch.Tensor | None = None) -> MetaStepResult:
        """One optimiser step of ``phi`` on the gradient of ``meta_loss``; the new weights."""
        phi = list(self.net.parameters())
        grads = torch.autograd.grad(meta_loss, phi, retain_graph=retain_graph)
        meta_value = meta_loss.detach()
        if self.world_size > 1:  # this rank's share of the meta batch -> the global mean
            from mama_augment.train.distributed import mean_across_ranks_

            grads = [g.clone() for g in grads]
            meta_value = meta_value.clone()
            mean_across_ranks_([*grads, meta_value], self.world_size)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(phi, grads):
            p.grad = g
        with torch.no_grad():
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        self.optimizer.step()
        normalised, raw = self.weights(per_sample, agreement)
        return MetaStepResult(normalised, raw, meta_value, grad_norm)

    @torch.no_grad()
    def curve(self, losses: torch.Tensor, agreement: torch.Tensor | None = None) -> torch.Tensor:
        """V of the given losses (with the agreement input: of pairs with that agreement, 1 if None)."""
        return self.net(losses.float(), agreement)


def forward_with_level_inputs(model: nn.Module, meta_params: str, video_inputs, text_inputs):
    """``model(video_inputs, text_inputs)`` computed in its parts, returning also the
    detached inputs of the meta step's level (``heads``: the features, ``last``: the
    heads' bodies) for :meth:`MetaWeighting.step_on_level`."""
    features = (model.video_features(video_inputs), model.text_features(text_inputs))
    if meta_params == "heads":
        return (*model.head(*features), tuple(f.detach() for f in features))
    bodies = model.head.bodies(*features)
    return (*model.head.out(*bodies), tuple(b.detach() for b in bodies))
