"""The agreement scores inside the weighting: as the weighting net's second input
(``--meta-inputs loss,agreement``), as its starting point (``--meta-init agreement``),
the prior's power (``--agreement-prior-power``), and the weight a run used
(``weight_used`` of ``pair_weights.parquet``), which the audit ranks by."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mama_augment.errors import UsageError
from mama_augment.train.audit import audit_run, load_run_weights
from mama_augment.train.config import TrainConfig
from mama_augment.train.meta import MetaWeighting, WeightingNet
from train_helpers import make_workdir


def _config(captions, **overrides):
    base = dict(captions=str(captions), text_model="hashing", progress=False, epochs=2, batch_size=32,
                embed_dim=32)
    base.update(overrides)
    return TrainConfig(**base)


def test_agreement_start_follows_the_agreement_and_ignores_the_loss():
    torch.manual_seed(0)
    net = WeightingNet(16, inputs=2, init="agreement")
    agreement = torch.tensor([0.0, 0.25, 0.5, 1.0])
    for loss in (0.1, 3.0, 12.0):
        out = net(torch.full((4,), loss), agreement)
        torch.testing.assert_close(out, torch.sigmoid(6 * agreement - 3))
    # a pair without a score counts as right
    torch.testing.assert_close(net(torch.tensor([1.0])), torch.sigmoid(torch.tensor([3.0])))
    flat = WeightingNet(16, inputs=2)
    torch.testing.assert_close(flat(torch.tensor([0.1, 9.0]), torch.tensor([0.0, 1.0])), torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="second input"):
        WeightingNet(16, inputs=1, init="agreement")


def test_the_meta_step_reads_the_agreement_input():
    """Two pairs with the same loss and different agreement get different weights from
    a net that reads it, and the same from one that does not."""
    from torch import nn

    class Level(nn.Module):
        def __init__(self):
            super().__init__()
            self.video = nn.Linear(4, 3)
            self.text = nn.Linear(4, 3)
            self.logit_scale = nn.Parameter(torch.tensor(2.0))

        def forward(self, v, t):
            return self.video(v), self.text(t), self.logit_scale

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = Level()

        def bodies(self, v, t):
            return v, t

    class Model(nn.Module):
        """The parts of a model the meta step (``--meta-params last``) reaches."""

        def __init__(self):
            super().__init__()
            self.head = Head()

        def video_features(self, x):
            return x

        def text_features(self, x):
            return x

    model = Model()
    from mama_augment.train.losses import build_loss

    criterion = build_loss("infonce", 0.0, 1e-6)
    torch.manual_seed(0)
    v, t = torch.randn(6, 4), torch.randn(6, 4)
    agreement = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    for reads, init in ((True, "agreement"), (False, "neutral")):
        meta = MetaWeighting(8, meta_lr=1e-3, virtual_lr=1.0, agreement_input=reads, init=init)
        video, text, scale = model.head.out(v, t)
        per_sample = criterion(video, text, scale).per_sample
        same_loss = per_sample.detach()[:1].expand(6)  # every pair with pair 0's loss
        result = meta.step(model, criterion, per_sample, (v, t), lambda: torch.autocast("cpu", enabled=False),
                           agreement)
        assert torch.isfinite(result.meta_loss)
        normalised, raw = meta.weights(same_loss, agreement)
        if reads:
            assert (raw[agreement == 1] > 2 * raw[agreement == 0]).all()
        else:
            torch.testing.assert_close(raw, raw[:1].expand(6))


def test_options_are_checked():
    assert TrainConfig(captions="c.csv").validate().meta_inputs == "loss"
    assert TrainConfig(captions="c.csv", meta_inputs="loss,agreement", meta_init="agreement").validate()
    with pytest.raises(UsageError, match="--meta-inputs"):
        TrainConfig(captions="c.csv", meta_inputs="agreement").validate()
    with pytest.raises(UsageError, match="needs --meta-inputs loss,agreement"):
        TrainConfig(captions="c.csv", meta_init="agreement").validate()
    with pytest.raises(UsageError, match="--agreement-prior-power"):
        TrainConfig(captions="c.csv", agreement_prior_power=0.0).validate()


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """A default-loss run on 300 videos with 40 % shuffled captions, the agreement read
    by the weighting net and the prior squared."""
    from mama_augment.train.loop import TrainRecipe

    root = tmp_path_factory.mktemp("meta_agreement")
    workdir, captions = make_workdir(root, n_videos=300, shuffled_fraction=0.4)
    recipe = TrainRecipe(_config(captions, meta_inputs="loss,agreement", agreement_prior_power=2.0), workdir)
    recipe.setup()
    recipe.train()
    recipe.save()
    return recipe


def test_a_run_feeds_the_agreement_to_the_net_and_squares_the_prior(noisy_run):
    data = noisy_run.data
    assert noisy_run.meta is not None and noisy_run.meta.agreement_input
    assert data.pair_agreement is not None and data.pair_prior is not None
    np.testing.assert_allclose(noisy_run.pair_agreement.cpu().numpy(), data.pair_agreement)
    np.testing.assert_allclose(data.pair_prior, data.pair_agreement ** 2, rtol=1e-6)
    assert (data.pair_agreement < 0.5).any() and (data.pair_agreement > 0.9).any()


def test_pair_weights_record_the_weight_the_run_used(noisy_run):
    """``weight_used`` is the weighting net's weight times the prior (the run's factor of
    each pair); before it the file held only the net's weight."""
    frame = pq.read_table(noisy_run.run_dir / "pair_weights.parquet").to_pandas()
    prior = noisy_run.data.pair_prior[frame.pair_id.to_numpy()]
    np.testing.assert_allclose(frame.weight_used, frame.weight * prior, rtol=1e-6)
    assert not np.allclose(frame.weight_used, frame.weight)


def test_least_trusted_ranking_reads_the_used_weight(noisy_run, tmp_path):
    """The audit and ``export --drop-least-trusted`` rank by the weight training used:
    here the used weights are set to the reverse order of the net's, and both rankings
    follow the used ones."""
    import shutil

    run = Path(tmp_path) / "run"
    shutil.copytree(noisy_run.run_dir, run)
    path = run / "pair_weights.parquet"
    table = pq.read_table(path)
    frame = table.to_pandas()
    reverse = frame.weight.rank(method="first").to_numpy()
    used = (len(frame) + 1 - reverse) / len(frame)  # highest net weight -> lowest used weight
    table = table.set_column(table.schema.get_field_index("weight_used"), "weight_used", pa.array(used))
    pq.write_table(table, path)
    ranked = audit_run(run, top=10).ranked
    assert ranked.weight_used.is_monotonic_increasing
    assert ranked.pair_id.iloc[0] == frame.pair_id.iloc[int(np.argmax(frame.weight.to_numpy()))]
    dropped = load_run_weights(run, 10.0, needs_weights=True)
    count = int(np.floor(len(frame) * 0.10))
    expected = set(frame.pair_id.to_numpy()[np.argsort(used, kind="stable")[:count]])
    assert set(np.flatnonzero(dropped.dropped_pair_ids)) == expected
