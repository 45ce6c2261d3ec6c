"""The text embedding cache (train/text.py): a hit gives exactly what the encoding gave,
read through a mapping; a damaged file is recomputed, never trusted."""

from __future__ import annotations

import numpy as np

from mama_augment.train.text import HashingTextEncoder, cached_text_embeddings


class CountingEncoder(HashingTextEncoder):
    def __init__(self):
        super().__init__(dim=16)
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return super().encode(texts)


def test_a_cache_hit_gives_what_the_encoding_gave(tmp_path):
    encoder = CountingEncoder()
    texts = [f"caption {i % 7} of clip {i % 11}" for i in range(100)] + ["a dog runs"] * 3
    first = cached_text_embeddings(encoder, texts, tmp_path)
    second = cached_text_embeddings(encoder, texts, tmp_path)
    assert encoder.calls == 1  # the second came from the file
    assert first.dtype == second.dtype == np.float32 and first.shape == (len(texts), 16)
    assert np.array_equal(first, second)
    assert np.array_equal(first, HashingTextEncoder(dim=16).encode(texts))
    # The file is written a chunk at a time, and is a safetensors file as any reader expects.
    from safetensors.numpy import load_file

    (path,) = tmp_path.glob("text-*.safetensors")
    assert np.array_equal(load_file(str(path))["embeddings"], HashingTextEncoder(dim=16).encode(sorted(set(texts))))
    second[0] = 0.0  # the caller owns what it got: the cache is not written through it
    assert np.array_equal(cached_text_embeddings(encoder, texts, tmp_path), first)
    assert cached_text_embeddings(encoder, [], tmp_path).shape == (0, 16)


def test_a_damaged_cache_file_is_encoded_again(tmp_path):
    encoder = CountingEncoder()
    texts = [f"caption {i}" for i in range(50)]
    expected = cached_text_embeddings(encoder, texts, tmp_path)
    (path,) = tmp_path.glob("text-*.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut short
    assert np.array_equal(cached_text_embeddings(encoder, texts, tmp_path), expected)
    assert encoder.calls == 2
    path.write_bytes(b"\xff" * 64)  # not a safetensors file at all
    assert np.array_equal(cached_text_embeddings(encoder, texts, tmp_path), expected)
    assert encoder.calls == 3


def test_some_rows_in_float16_are_those_of_every_row(tmp_path):
    encoder = CountingEncoder()
    texts = [f"caption {i % 13} of clip {i}" for i in range(300)]
    every = cached_text_embeddings(encoder, texts, tmp_path)
    rows = np.asarray([299, 0, 17, 17, 150])
    some = cached_text_embeddings(encoder, texts, tmp_path, rows=rows, dtype=np.float16)
    assert some.dtype == np.float16 and np.array_equal(some, every[rows].astype(np.float16))
    assert encoder.calls == 1  # one cache for both


def test_a_file_of_several_chunks_reads_back_whole(tmp_path, monkeypatch):
    import mama_augment.train.text as text

    encoder = CountingEncoder()
    texts = [f"caption number {i}" for i in range(1000)]
    original = text._encode_into
    monkeypatch.setattr(text, "_encode_into", lambda path, enc, unique: original(path, enc, unique, chunk=64))
    got = cached_text_embeddings(encoder, texts, tmp_path)
    assert encoder.calls == 16  # ceil(1000 / 64) chunks
    assert np.array_equal(got, HashingTextEncoder(dim=16).encode(texts))
