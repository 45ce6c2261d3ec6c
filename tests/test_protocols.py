"""Retrieval protocols on hand-made similarity matrices whose answers are known,
ties included, and the expected-rank tie rule checked against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mama_augment.train import protocols as P
from mama_augment.train.evaluate import format_table, retrieval_metrics


def metrics(higher_ties) -> dict:
    return P.summarise(*higher_ties)


def test_text_to_video_and_video_to_text_without_ties():
    sim = np.array([[0.9, 0.1, 0.2],   # caption 0 -> video 0: rank 1
                    [0.8, 0.7, 0.1],   # caption 1 -> video 1: rank 2
                    [0.5, 0.6, 0.4]])  # caption 2 -> video 2: rank 3
    t2v = metrics(P.text_to_video_counts(sim, [0, 1, 2]))
    assert t2v["R@1"] == pytest.approx(100 / 3) and t2v["R@5"] == 100
    assert t2v["MdR"] == 2 and t2v["MnR"] == 2
    v2t = metrics(P.video_to_text_counts(sim, [0, 1, 2]))  # every video's own caption beats the others'
    assert v2t["R@1"] == 100 and v2t["MnR"] == 1


def test_ties_count_as_the_expected_rank_under_random_order():
    sim = np.array([[0.5, 0.5, 0.1],   # own tied with one other: rank 1.5, R@1 = 1/2
                    [0.5, 0.5, 0.5],   # own tied with two others: rank 2, R@1 = 1/3
                    [0.2, 0.3, 0.4]])  # clear: rank 1
    higher, ties = P.text_to_video_counts(sim, [0, 1, 2])
    assert list(higher) == [0, 0, 0] and list(ties) == [1, 2, 0]
    t2v = P.summarise(higher, ties)
    assert t2v["R@1"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3 * 100)
    assert t2v["MnR"] == pytest.approx((1.5 + 2 + 1) / 3) and t2v["MdR"] == 1.5


def test_a_collapsed_model_gets_chance_not_a_perfect_score():
    sim = np.zeros((10, 10))
    t2v = metrics(P.text_to_video_counts(sim, np.arange(10)))
    assert t2v["R@1"] == pytest.approx(10.0) and t2v["R@5"] == pytest.approx(50.0) and t2v["MnR"] == pytest.approx(5.5)


def test_nan_similarities_never_rank_first():
    sim = np.array([[np.nan, 0.2], [np.nan, np.nan]])
    higher, ties = P.text_to_video_counts(sim, [0, 1])
    assert list(higher) == [1, 0] and list(ties) == [0, 1]  # NaN is the lowest score; two NaNs tie


def _brute_force(scores: np.ndarray, target: int, k: int) -> tuple[float, float]:
    """P(target within top k) and its mean 1-based position over every order of the
    items sorted by score with ties in any order (all such orders equally likely)."""
    hits, positions, orders = 0, 0, 0
    for order in itertools.permutations(range(len(scores))):
        if all(scores[a] >= scores[b] for a, b in zip(order, order[1:])):
            position = order.index(target) + 1
            hits += position <= k
            positions += position
            orders += 1
    return hits / orders, positions / orders


def test_tie_rule_matches_brute_force_on_random_tied_matrices():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n_captions, n_videos = 5, 5
        sim = rng.integers(0, 3, size=(n_captions, n_videos)).astype(np.float64)  # many ties
        caption_video = rng.permutation(n_videos)
        higher, ties = P.text_to_video_counts(sim, caption_video)
        for row in range(n_captions):
            for k in (1, 2, 3):
                p_hit, mean_position = _brute_force(sim[row], caption_video[row], k)
                assert P.recall_at(higher[row], ties[row], k) == pytest.approx(p_hit)
                assert P.expected_ranks(higher[row], ties[row]) == pytest.approx(mean_position)


def test_multi_sentence_video_to_text_hits_when_any_own_caption_is_within_k():
    caption_video = [0, 0, 1]
    sim = np.array([[0.2, 0.9],   # caption 0 (video 0) prefers video 1
                    [0.8, 0.3],   # caption 1 (video 0)
                    [0.7, 0.6]])  # caption 2 (video 1) prefers video 0
    t2v = metrics(P.text_to_video_counts(sim, caption_video))
    assert t2v["R@1"] == pytest.approx(100 / 3)  # only caption 1 finds its video first
    higher, ties = P.video_to_text_counts(sim, caption_video)
    # video 0: its caption 1 (0.8) tops caption 2 (0.7); video 1: caption 0 (0.9) beats its own (0.6)
    assert list(higher) == [0, 1] and list(ties) == [0, 0]
    with pytest.raises(ValueError):
        P.video_to_text_counts(sim, [0, 0, 0])  # video 1 has no caption


def test_dual_softmax_corrects_a_hub_video():
    # video 1 is a hub: caption 0 scores it above its own video 0
    sim = torch.tensor([[0.5, 0.6], [0.1, 0.9]], dtype=torch.float64)
    plain = P.retrieval(sim, [0, 1], dsl=True)
    assert metrics(plain["text_to_video"])["R@1"] == 50
    assert metrics(plain["dsl_text_to_video"])["R@1"] == 100
    t2v, v2t = P.dual_softmax(sim, temperature=100.0)
    # the hub's column prior goes almost entirely to caption 1
    assert t2v[0, 1] < 1e-10 and t2v[0, 0] == pytest.approx(0.5, rel=1e-6)
    assert v2t[0, 0] == pytest.approx(0.5 * 1 / (1 + math.exp(10)), rel=1e-6)


def test_one_caption_selection_and_protocol_choice():
    assert list(P.first_caption_per_video([0, 0, 1, 2, 2, 1])) == [0, 2, 3]
    assert P.choose_protocol([0, 1, 2], paragraph=False) == "one-caption"
    assert P.choose_protocol([0, 0, 1], paragraph=False) == "multi-sentence"
    assert P.choose_protocol([0, 1], paragraph=True) == "paragraph"


def test_frequency_thirds_and_group_metrics():
    counts = {"a": 1, "b": 1, "c": 2, "d": 5, "f": 9, "e": 9, "g": 20}
    thirds = P.frequency_thirds(counts)
    assert {c for c, t in thirds.items() if t == "rare"} == {"a", "b", "c"}
    assert {c for c, t in thirds.items() if t == "medium"} == {"d", "e"}  # e before f: ties by name
    assert {c for c, t in thirds.items() if t == "frequent"} == {"f", "g"}
    assert P.frequency_thirds({"a": 1, "b": 2}) == {}
    groups = P.group_metrics([0, 3, 0, 1], [0, 0, 1, 0], ["x", "x", "y", None])
    assert groups["x"]["R@1"] == 50 and groups["y"]["R@1"] == 50 and set(groups) == {"x", "y"}


def test_multiple_choice_accuracy_with_ties_and_fewer_candidates():
    scores = np.array([[0.1, 0.9, 0.3, 0.2, 0.0],
                       [0.5, 0.5, 0.1, np.nan, np.nan],   # answer tied with one other: half credit
                       [0.2, 0.1, 0.9, 0.0, 0.0]])        # wrong
    result = P.multiple_choice(scores, [1, 0, 0])
    assert result["items"] == 3
    assert result["accuracy"] == pytest.approx(1.5 / 3 * 100)
    assert result["chance"] == pytest.approx((1 / 5 + 1 / 3 + 1 / 5) / 3 * 100)


def test_retrieval_metrics_are_labelled_with_protocol_ties_and_dsl():
    video = torch.eye(4)
    text = torch.eye(4)[[0, 1, 2, 3, 0, 1]]
    text[5] = torch.tensor([0.0, 0.1, 0.9, 0.0])  # a caption of video 1 that looks like video 2
    result = retrieval_metrics(video, text, [0, 1, 2, 3, 0, 1], ["cat", "dog", "cow", "eel", "cat", "dog"],
                               ["cat", "dog", "cow", "eel"], protocol="multi-sentence", dsl=True,
                               concept_counts={"cat": 9, "dog": 1, "cow": 5, "eel": 2})
    assert result["protocol"] == "multi-sentence" and "expected rank" in result["tie_rule"]
    assert result["text_to_video"]["R@1"] == pytest.approx(5 / 6 * 100)
    assert result["video_to_text"]["R@1"] == 100  # video 1 still has a caption on top
    assert "transductive" in result["dsl"]["note"] and result["dsl"]["temperature"] == P.DSL_TEMPERATURE
    rows = {row["concept"]: row for row in result["per_concept"]}
    assert rows["dog"]["t2v_R@1"] == 50 and rows["cat"]["captions"] == 2
    thirds = {row["third"]: row for row in result["concept_thirds"]}
    assert thirds["rare"]["concepts"] == 2 and thirds["rare"]["t2v_R@1"] == pytest.approx(2 / 3 * 100)  # dog, eel
    table = format_table({**result, "split": "test"})
    assert "multi-sentence" in table and "text to video (DSL)" in table and "rare (2 concepts)" in table
