"""``training.png``: every panel says what it shows, or why it is empty."""

from __future__ import annotations

import json

import pytest

from mama_augment.train.plots import draw
from mama_augment.train.runs import RunPaths


def _panel_texts(monkeypatch, run_dir) -> list[str]:
    """The free text drawn on the panels (the notes that stand for missing data)."""
    pytest.importorskip("matplotlib", reason="matplotlib draws the run's pictures")
    from matplotlib.axes import Axes

    texts = []
    original = Axes.text

    def recording_text(self, x, y, s, *args, **kwargs):
        texts.append(s)
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Axes, "text", recording_text)
    draw(run_dir)
    return texts


def _write_metrics(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    RunPaths(run_dir).metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))


STEP = {"kind": "step", "step": 1, "loss": 1.0, "loss_unweighted": 1.1, "logit_scale": 14.0}


def test_run_without_validation_split_says_so(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _write_metrics(run_dir, [STEP, {**STEP, "step": 2}])
    texts = _panel_texts(monkeypatch, run_dir)
    assert "no validation split" in texts and "no meta-weighting" in texts
    assert RunPaths(run_dir).training_plot.is_file()


def test_run_with_validation_has_no_such_note(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _write_metrics(run_dir, [STEP, {"kind": "eval", "step": 1, "epoch": 1, "t2v_R@1": 10.0, "v2t_R@1": 12.0}])
    assert "no validation split" not in _panel_texts(monkeypatch, run_dir)
