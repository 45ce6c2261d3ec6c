"""The meta-learned loss -> weight function and its bi-level step (METHOD.md section 3).

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
    """V(l; phi) = sigmoid(W2 relu(W1 l + b1) + b2): per-sample loss -> weight in (0, 1)."""

    def __init__(self, hidden: int = 100, neutral_init: bool = True):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())
        if neutral_init:
            # Start flat (V = 0.5 for every loss, i.e. plain unweighted training) rather
            # than with the random slope of a default init: on the emoji benchmark that
            # slope up-weighted high losses, and where the meta-gradient is weak it
            # never unlearned it (benchmarks/train_quality.py).
            nn.init.zeros_(self.net[2].weight)
            nn.init.zeros_(self.net[2].bias)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return self.net(losses.reshape(-1, 1).to(self.net[0].weight.dtype)).reshape(-1)


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
    meta_loss: float
    meta_grad_norm: float


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
    ):
        self.rank = rank
        self.world_size = world_size
        self.net = WeightingNet(hidden).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=meta_lr)
        self.virtual_lr = virtual_lr
        if meta_params not in META_PARAMS:
            raise ValueError(f"meta_params must be one of {', '.join(META_PARAMS)}")
        self.meta_params = meta_params

    @torch.no_grad()
    def weights(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised, raw) weights of detached losses under the current ``phi``."""
        raw = self.net(losses.detach().float())
        return normalise_weights(raw, world_size=self.world_size), raw

    def meta_loss(
        self,
        model: nn.Module,
        criterion: Callable,
        per_sample: torch.Tensor,
        meta_inputs: tuple[Any, Any],
        autocast: Callable[[], Any],
    ) -> torch.Tensor:
        """Steps 1-3 up to the meta loss, a differentiable function of ``phi``.

        ``per_sample`` carries the graph of the training forward; it is reused, never
        recomputed. The virtual gradient of a parameter subset flows from it without
        entering the layers below that subset.
        """
        weights = self.net(per_sample.detach().float())
        weighted = (weights * per_sample).mean()
        module, inputs = self._level(model, meta_inputs, autocast)
        params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        virtual = virtual_parameters(params, weighted, self.virtual_lr, self.world_size)
        with autocast():
            video, text, scale = functional_call(module, virtual, inputs)
            return criterion(video, text, scale).per_sample.mean()

    def _level(self, model: nn.Module, meta_inputs: tuple[Any, Any], autocast) -> tuple[nn.Module, tuple]:
        """The module whose parameters take the virtual step, and its meta-batch
        inputs; everything below it runs once, without a graph."""
        if self.meta_params == "all":
            return model, meta_inputs
        meta_video, meta_text = meta_inputs
        with torch.no_grad(), autocast():
            features = (model.video_features(meta_video), model.text_features(meta_text))
            if self.meta_params == "heads":
                return model.head, features
            return model.head.out, model.head.bodies(*features)

    def step(
        self,
        model: nn.Module,
        criterion: Callable,
        per_sample: torch.Tensor,
        meta_inputs: tuple[Any, Any],
        autocast: Callable[[], Any],
    ) -> MetaStepResult:
        """Update ``phi`` once and return the real step's weights (no grad)."""
        meta_loss = self.meta_loss(model, criterion, per_sample, meta_inputs, autocast)
        phi = list(self.net.parameters())
        # retain_graph: the real step backpropagates through the same training forward.
        grads = torch.autograd.grad(meta_loss, phi, retain_graph=True)
        meta_value = meta_loss.detach()
        if self.world_size > 1:  # this rank's share of the meta batch -> the global mean
            from mama_augment.train.distributed import mean_across_ranks_

            grads = [g.clone() for g in grads]
            meta_value = meta_value.clone()
            mean_across_ranks_([*grads, meta_value], self.world_size)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(phi, grads):
            p.grad = g
        grad_norm = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads)))
        self.optimizer.step()
        normalised, raw = self.weights(per_sample)
        return MetaStepResult(normalised, raw, float(meta_value), grad_norm)

    @torch.no_grad()
    def curve(self, losses: torch.Tensor) -> torch.Tensor:
        return self.net(losses.float())
