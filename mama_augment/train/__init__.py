"""Training and evaluation of video-text retrieval models with the MAMA objective.

Layers: building blocks (``losses``, ``meta``, ``models``, ``text``, ``data``), the
registries (``backbones``, and ``config`` for losses and choices), infrastructure
(``runs``: the run folder, ``checkpoint``, ``distributed``, ``plots``, ``evaluate``,
``audit``) and the recipe (``loop``). Heavy imports (torch, transformers) happen when
these modules are imported, not by the package.
"""

from mama_augment.train.config import TrainConfig

__all__ = ["TrainConfig", "run_train", "evaluate_run"]


def run_train(*args, **kwargs):
    from mama_augment.train.loop import run_train as _run_train

    return _run_train(*args, **kwargs)


def evaluate_run(*args, **kwargs):
    from mama_augment.train.evaluate import evaluate_run as _evaluate_run

    return _evaluate_run(*args, **kwargs)
