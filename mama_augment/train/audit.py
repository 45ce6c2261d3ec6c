"""Which training pairs the model distrusts: ``pair_weights.parquet`` and its audit.

The meta-learned weighting net is a noise detector: at the end of training it gives
low weight to the losses of pairs whose caption does not fit the video. Every run
scores each training pair once more under the final model and weighting net and
writes ``<run>/pair_weights.parquet`` (schema :data:`PAIR_WEIGHTS_SCHEMA`, one row per
(video, caption) pair of the training stream); :func:`audit_run` ranks those rows,
least trusted first.

Scoring. The loss of a pair is contrastive, so it depends on the batch it is scored
in. Pairs are scored in seeded batches of the training batch size in which, as in
training, no video appears twice (a second caption of the same video would be a
false negative). ``weight`` is ``V(loss)`` divided by the mean of ``V(loss)`` over
all rows of the file: mean 1 over the training pairs, the scale training uses (there
every batch is normalised to mean 1), but with the batch mean replaced by the mean
over all pairs, so a pair's weight does not depend on which pairs it was scored with
and ranking by ``weight`` is ranking by ``V(loss)``. ``mean_weight_last_epoch`` is
what training itself did: the batch-normalised weight of the pair's real steps in the
last epoch (a pair is drawn at most once per epoch, so null when its video was paired
with another caption or fell into the dropped last partial batch). ``weight_used`` is
``weight`` times the factors training multiplied it by: the pair's agreement prior
(``--agreement-prior``) and its caption source's weight (``--generated-weight``); it is
``weight`` where neither applies, and the audit and ``export --drop-least-trusted`` rank
by it (the weighting net alone misses what the prior takes away).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mama_augment.checks import check_number
from mama_augment.fileio import atomic_path
from mama_augment.errors import MamaError, UsageError
from mama_augment.manifest import ROW_GROUP_ROWS
from mama_augment.train.config import TrainConfig, loss_takes_meta_weighting
from mama_augment.train.runs import RunPaths, load_run_config

PAIR_WEIGHTS_SCHEMA = pa.schema([
    pa.field("pair_id", pa.int64(), nullable=False),  # caption id in the run (stable for the same inputs)
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("caption", pa.string(), nullable=False),
    pa.field("caption_source", pa.string(), nullable=False),  # original | generated
    pa.field("caption_index", pa.int32()),  # captions.parquet caption_index (generated); null for original
    pa.field("concept", pa.string()),
    pa.field("grid_path", pa.string()),  # absolute; the image itself for one-frame (image) videos
    pa.field("loss", pa.float64(), nullable=False),
    pa.field("weight", pa.float64()),  # V(loss) / mean V(loss) over all rows; null without meta-weighting
    pa.field("weight_raw", pa.float64()),  # V(loss) in (0, 1); null without meta-weighting
    pa.field("mean_weight_last_epoch", pa.float64()),  # mean batch-normalised training weight, last epoch
    pa.field("last_epoch_steps", pa.int32(), nullable=False),  # real steps of the last epoch with this pair
    # weight x agreement prior x caption source's weight: what the run trained with; null without meta-weighting
    pa.field("weight_used", pa.float64()),
])
# Parquet key-value metadata of the file.
META_WEIGHTED = b"mama_augment.weighted"  # b"true" / b"false"
META_NOTE = b"mama_augment.note"
META_NORMALISATION = b"mama_augment.weight_normalisation"
NO_WEIGHTING_NOTE = (
    "this run was trained without meta-weighting (--no-meta-weighting, --loss infonce, or decided by the data: "
    "see estimated_wrong_share and meta_weighting_off_why in its config.json): "
    "pair_weights.parquet holds the per-pair losses only, there are no weights to audit"
)
NORMALISATION = "weight = V(loss) / mean of V(loss) over all rows (mean 1 over the training pairs)"

SOURCES = ("original", "generated", "all")
# Without --threshold the summary counts pairs below half the average weight.
DEFAULT_SUMMARY_THRESHOLD = 0.5
EXPORT_SUFFIXES = (".csv", ".parquet")


# --------------------------------------------------------------------- recording
class WeightRecorder:
    """Sum and count of the weights each pair (caption id) received in the real steps
    of the last epoch. Kept in the checkpoint, so a resumed run records the same."""

    PREFIX = "pair_record."

    def __init__(self, num_pairs: int):
        self.weight_sum = np.zeros(num_pairs, dtype=np.float64)
        self.count = np.zeros(num_pairs, dtype=np.int64)
        self._pending: list = []  # (ids, weights tensor) not yet read back from the device

    def record(self, caption_ids, weights) -> None:
        ids = np.asarray(caption_ids, dtype=np.int64).reshape(-1)
        if len(weights) != len(ids):  # e.g. a rank's shard of the weights with the whole batch's ids
            raise ValueError(f"{len(weights)} weights for {len(ids)} pairs")
        if hasattr(weights, "detach"):  # read later: reading now would wait for the device every step
            self._pending.append((ids, weights.detach()))
            return
        self._add(ids, weights)

    def _add(self, ids: np.ndarray, weights) -> None:
        np.add.at(self.weight_sum, ids, np.asarray(weights, dtype=np.float64).reshape(-1))
        np.add.at(self.count, ids, 1)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for ids, weights in pending:
            self._add(ids, weights.float().cpu().numpy())

    def mean(self) -> np.ndarray:
        self._flush()
        out = np.full(len(self.count), np.nan)
        seen = self.count > 0
        out[seen] = self.weight_sum[seen] / self.count[seen]
        return out

    def state_tensors(self) -> dict:
        import torch

        self._flush()
        return {self.PREFIX + "weight_sum": torch.from_numpy(self.weight_sum.copy()),
                self.PREFIX + "count": torch.from_numpy(self.count.copy())}

    def load_state_tensors(self, tensors: dict) -> None:
        """Restore from a checkpoint; one written before recording existed leaves it empty."""
        key_sum, key_count = self.PREFIX + "weight_sum", self.PREFIX + "count"
        self._pending = []
        if key_sum in tensors and len(tensors[key_sum]) == len(self.weight_sum):
            self.weight_sum = tensors[key_sum].double().numpy().copy()
            self.count = tensors[key_count].long().numpy().copy()


# --------------------------------------------------------------------- scoring
def scoring_batches(pair_video: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
    """Positions of ``pair_video`` split into batches in which no video appears twice.

    A video's captions go to different rounds (round k holds one caption of every
    video with more than k); each round is shuffled and cut into batches of about
    ``batch_size``. A round too small to be a fair batch is spread over the first
    round's batches that lack its videos (the first round has every video once).
    """
    pair_video = np.asarray(pair_video)
    rng = np.random.default_rng([seed, 3])
    order = rng.permutation(len(pair_video))
    seen: dict[int, int] = {}
    rounds: dict[int, list[int]] = {}
    for position in order:
        video = int(pair_video[position])
        k = seen.get(video, 0)
        seen[video] = k + 1
        rounds.setdefault(k, []).append(int(position))
    size = max(2, batch_size)
    batches: list[list[int]] = []
    leftovers: list[int] = []
    for k in sorted(rounds):
        members = rounds[k]
        if k > 0 and len(members) < max(2, size // 2):
            leftovers += members
            continue
        n = max(1, int(round(len(members) / size)))
        batches += [list(part) for part in np.array_split(np.asarray(members, dtype=np.int64), n)]
    first_round = len(batches) if not rounds else max(1, int(round(len(rounds[0]) / size)))
    videos_of = [set(int(pair_video[p]) for p in b) for b in batches]
    cursor = 0
    for position in leftovers:
        video = int(pair_video[position])
        for attempt in range(first_round):
            b = (cursor + attempt) % first_round
            if video not in videos_of[b]:
                batches[b].append(position)
                videos_of[b].add(video)
                cursor = b + 1
                break
    return [np.asarray(b, dtype=np.int64) for b in batches if len(b) >= 2]


def score_pairs(model, criterion, meta, data, batch_size: int, seed: int, autocast: Callable = None,
                pair_agreement: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(caption ids, losses, raw weights or None) of every training pair under the
    model and weighting net as they are now. ``pair_agreement`` (per caption id) is the
    net's second input where it reads one."""
    import contextlib

    import torch

    autocast = autocast or contextlib.nullcontext
    caption_ids = np.concatenate(data.train_captions).astype(np.int64)
    pair_video = data.caption_video[caption_ids]
    ids, losses, raws = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in scoring_batches(pair_video, batch_size, seed):
                with autocast():
                    video, text, scale = model(model.video_inputs(pair_video[batch]), model.text_inputs(caption_ids[batch]))
                    loss = criterion(video, text, scale).per_sample.float()
                ids.append(caption_ids[batch])
                losses.append(loss.cpu().numpy().astype(np.float64))
                if meta is not None:
                    agreement = None if pair_agreement is None else torch.as_tensor(
                        np.asarray(pair_agreement, dtype=np.float32)[caption_ids[batch]], device=loss.device)
                    raws.append(meta.curve(loss, agreement).float().cpu().numpy().astype(np.float64))
    finally:
        model.train(was_training)
    ids_all = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    order = np.argsort(ids_all, kind="stable")
    loss_all = np.concatenate(losses)[order] if losses else np.zeros(0)
    raw_all = np.concatenate(raws)[order] if raws else None
    return ids_all[order], loss_all, raw_all


def _grid_paths(workdir: Path, data, caption_ids: np.ndarray) -> list[str | None]:
    """The picture behind each pair: the caption's grid (generated), else the video's
    grid from keyframes.parquet, else for an image the image itself."""
    from mama_augment.manifest import CAPTIONS, read_manifest
    from mama_augment.workread import ok_video_batches

    def absolute(p):
        if not p:
            return None
        path = Path(p)
        return str(path if path.is_absolute() else (workdir / path).absolute())

    video_grid: dict[str, str | None] = {}
    try:
        for batch in ok_video_batches(workdir, ["grid_path", "path", "media_type"]):
            for row in batch.to_pylist():
                grid = row["grid_path"] or (row["path"] if row["media_type"] == "image" else None)
                video_grid[row["video_id"]] = absolute(grid)
    except Exception:  # a picture path is a convenience; never fail the run for it
        pass
    caption_grid: dict[tuple[str, int], str | None] = {}
    if data.caption_index and any(data.caption_index[c] is not None for c in caption_ids):
        try:
            gen = read_manifest(workdir, CAPTIONS, columns=["grid_path"]).to_pydict()
            for i, video_id in enumerate(gen["video_id"]):
                caption_grid[(video_id, int(gen["caption_index"][i]))] = absolute(gen["grid_path"][i])
        except Exception:
            pass
    out = []
    for c in caption_ids:
        video_id = data.videos.video_ids[data.caption_video[c]]
        index = data.caption_index[c] if data.caption_index else None
        grid = caption_grid.get((video_id, index)) if index is not None else None
        out.append(grid or video_grid.get(video_id))
    return out


def pair_weights_table(data, workdir: str | Path, caption_ids: np.ndarray, losses: np.ndarray,
                       raw_weights: np.ndarray | None, recorder: WeightRecorder | None,
                       pair_factor: np.ndarray | None = None) -> pa.Table:
    """The rows of ``pair_weights.parquet`` with the file's metadata. ``pair_factor``
    (per caption id, None: all 1) is what training multiplied each pair's weight by."""
    workdir = Path(workdir)
    weighted = raw_weights is not None
    n = len(caption_ids)
    if weighted:
        mean_raw = float(np.mean(raw_weights)) if n else 1.0
        weight = raw_weights / max(mean_raw, 1e-12)
    if recorder is not None:
        recorded = recorder.mean()[caption_ids]
        steps = recorder.count[caption_ids]
    else:
        recorded, steps = np.full(n, np.nan), np.zeros(n, dtype=np.int64)
    videos = data.caption_video[caption_ids]

    def nullable(values):
        return [None if not np.isfinite(v) else float(v) for v in values]

    columns = {
        "pair_id": caption_ids.astype(np.int64),
        "video_id": [data.videos.video_ids[v] for v in videos],
        "caption": [data.texts[c] for c in caption_ids],
        "caption_source": [data.caption_source[c] for c in caption_ids],
        "caption_index": [data.caption_index[c] if data.caption_index else None for c in caption_ids],
        "concept": [data.caption_concept[c] or data.videos.concepts[v] for c, v in zip(caption_ids, videos)],
        "grid_path": _grid_paths(workdir, data, caption_ids),
        "loss": losses.astype(np.float64),
        "weight": weight.astype(np.float64) if weighted else [None] * n,
        "weight_raw": raw_weights.astype(np.float64) if weighted else [None] * n,
        "mean_weight_last_epoch": nullable(recorded) if weighted else [None] * n,
        "last_epoch_steps": steps.astype(np.int32),
        "weight_used": (weight * (1.0 if pair_factor is None else np.asarray(pair_factor, dtype=np.float64)[caption_ids])
                        ).astype(np.float64) if weighted else [None] * n,
    }
    table = pa.table(columns, schema=PAIR_WEIGHTS_SCHEMA)
    metadata = {META_WEIGHTED: b"true" if weighted else b"false",
                META_NORMALISATION: NORMALISATION.encode()}
    if not weighted:
        metadata[META_NOTE] = NO_WEIGHTING_NOTE.encode()
    return table.replace_schema_metadata(metadata)


def write_pair_weights(run_dir: str | Path, workdir: str | Path, data, model, criterion_factory: Callable, meta,
                       batch_size: int, seed: int, recorder: WeightRecorder | None = None,
                       autocast: Callable | None = None, pair_factor: np.ndarray | None = None,
                       pair_agreement: np.ndarray | None = None) -> Path:
    """Score every training pair and write ``<run_dir>/pair_weights.parquet`` atomically.

    ``criterion_factory()`` builds a single-process loss (scoring runs on one rank and
    must not wait for the others). ``pair_factor`` and ``pair_agreement`` are per caption
    id: the factor of each pair's weight in training, the weighting net's second input."""
    ids, losses, raw = score_pairs(model, criterion_factory(), meta, data, batch_size, seed, autocast, pair_agreement)
    table = pair_weights_table(data, workdir, ids, losses, raw, recorder if meta is not None else None, pair_factor)
    path = RunPaths(Path(run_dir)).pair_weights
    with atomic_path(path) as tmp:
        # Row groups bound the memory of readers that stream the file (``export``).
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
    return path


# --------------------------------------------------------------------- audit
@dataclass
class AuditResult:
    """Every pair of the chosen source, least trusted first (``ranked``; ``rank`` 1 is
    the least trusted), and counts for the summary."""

    run_dir: Path
    weighted: bool
    source: str
    top: int
    threshold: float | None  # the user's --threshold (restricts the export)
    summary_threshold: float  # the threshold the summary counts against
    ranked: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)  # pairs per caption_source
    below: dict[str, int] = field(default_factory=dict)  # pairs below summary_threshold, per source
    note: str | None = None

    @property
    def top_rows(self) -> pd.DataFrame:
        return self.ranked.head(self.top)

    @property
    def export_rows(self) -> pd.DataFrame:
        """What ``--export`` writes: the whole ranked list, or with a threshold (and
        weights) only the pairs below it."""
        if self.threshold is None or not self.weighted:
            return self.ranked
        return self.ranked[self.ranked["weight_used"] < self.threshold]

    def summary_line(self) -> str:
        total = sum(self.counts.values())
        if not self.weighted:
            return f"{total} pairs, no weights (run without meta-weighting): ranked by loss, highest first"
        parts = ", ".join(f"{self.below.get(s, 0)} of {n} {s}" for s, n in sorted(self.counts.items()))
        below = sum(self.below.values())
        return f"{below} of {total} pairs have weight < {self.summary_threshold:g} ({parts})"


def read_pair_weights(run_dir: str | Path) -> tuple[pd.DataFrame, bool, str | None]:
    """(rows, weighted, note) of a run's ``pair_weights.parquet``."""
    run_dir = Path(run_dir)
    path = RunPaths(run_dir).pair_weights
    if not path.exists():
        if not RunPaths(run_dir).config.exists():
            raise UsageError(f"{run_dir} is not a run folder (no {RunPaths.CONFIG})")
        raise UsageError(f"{path} does not exist: the run has not finished (train writes it at the end)")
    try:
        table = pq.read_table(path)
        metadata = table.schema.metadata or {}
        frame = table.to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise MamaError(f"{path} cannot be read ({exc}); run training again to rewrite it") from None
    missing = [c for c in ("pair_id", "loss") if c not in frame.columns]
    if missing or ("caption_source" not in frame.columns and "source" not in frame.columns):
        raise MamaError(f"{path} is not a pair_weights table (columns: {', '.join(frame.columns)})")
    note = metadata.get(META_NOTE, b"").decode() or None
    if "caption_source" not in frame.columns and "source" in frame.columns:
        # Written before this schema: raw weights and per-batch normalised ones.
        frame = frame.rename(columns={"source": "caption_source", "weight": "weight_raw",
                                      "weight_normalised": "weight"})
        weighted = bool(frame["weight_raw"].notna().all()) and _was_weighted(run_dir)
        note = "older pair_weights.parquet: weight is normalised per scoring batch" if weighted else NO_WEIGHTING_NOTE
    elif META_WEIGHTED in metadata:
        weighted = metadata[META_WEIGHTED] == b"true"
    else:
        weighted = "weight" in frame.columns and frame["weight"].notna().any()
    for column in ("caption_index", "concept", "grid_path", "mean_weight_last_epoch"):
        if column not in frame.columns:
            frame[column] = None
    if "weight_used" not in frame.columns:  # written before the column: the weighting net's weight was all
        frame["weight_used"] = frame["weight"] if "weight" in frame.columns else np.nan
    else:  # a row without it (a file written by other tools) ranks by the net's weight
        frame["weight_used"] = frame["weight_used"].fillna(frame["weight"])
    if not weighted:
        frame["weight"] = np.nan
        frame["weight_used"] = np.nan
    return frame, weighted, note


def _was_weighted(run_dir: Path) -> bool:
    try:
        config = json.loads(RunPaths(run_dir).config.read_text())
    except (OSError, ValueError):
        return True
    flag = config.get("meta_weighting")
    if flag is not None:
        return flag
    return loss_takes_meta_weighting(config.get("loss", TrainConfig.loss))


def least_trusted_order(weight: np.ndarray | None, loss: np.ndarray, pair_id: np.ndarray) -> np.ndarray:
    """Positions of the pairs, least trusted first: the one ranking the audit shows and
    ``export --drop-least-trusted`` drops by.

    With weights (``weight_used``, the weight training applied): lowest first, ties broken
    by the higher loss, then the lower ``pair_id``; a pair without a weight comes last. Without (``weight`` None): highest
    loss first, then the lower ``pair_id``.
    """
    loss = np.asarray(loss, dtype=float)
    pair_id = np.asarray(pair_id)
    if weight is None:
        return np.lexsort((pair_id, -loss))
    # np.lexsort sorts by the last key first and puts NaN last, as the audit always has.
    return np.lexsort((pair_id, -loss, np.asarray(weight, dtype=float)))


def audit_run(run_dir: str | Path, top: int = 20, source: str = "all", threshold: float | None = None) -> "AuditResult":
    """Rank a run's training pairs, least trusted first.

    With weights: lowest ``weight_used`` (the weight the run trained with: the weighting
    net's times the agreement prior and the caption source's weight) first, ties broken
    by the higher loss; ``threshold`` and the summary count against it too. Without (a
    run trained without meta-weighting): highest loss first, and ``note`` says so.
    """
    if source not in SOURCES:
        raise UsageError(f"--source must be one of {', '.join(SOURCES)}, not {source!r}")
    check_number(top, "--top", minimum=0)
    check_number(threshold, "--threshold")
    paths = RunPaths(Path(run_dir))
    if paths.config.is_file():
        # A damaged config.json is one error line (exit 1), as from evaluate and
        # train --resume: a folder whose record of the run is unreadable is not a run to report on.
        load_run_config(paths)
    frame, weighted, note = read_pair_weights(run_dir)
    if source != "all":
        frame = frame[frame["caption_source"] == source]
    order = least_trusted_order(frame["weight_used"].to_numpy() if weighted else None, frame["loss"].to_numpy(),
                                frame["pair_id"].to_numpy())
    frame = frame.iloc[order].reset_index(drop=True)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    summary_threshold = DEFAULT_SUMMARY_THRESHOLD if threshold is None else float(threshold)
    counts = frame["caption_source"].value_counts().to_dict()
    below = {}
    if weighted:
        below = frame[frame["weight_used"] < summary_threshold]["caption_source"].value_counts().to_dict()
    return AuditResult(Path(run_dir), weighted, source, top, threshold, summary_threshold, frame,
                       {str(k): int(v) for k, v in counts.items()}, {str(k): int(v) for k, v in below.items()}, note)


def export_audit(result: AuditResult, path: str | Path) -> int:
    """Write ``result.export_rows`` to ``.csv`` or ``.parquet``; return the row count."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise UsageError(f"--export must end in {' or '.join(EXPORT_SUFFIXES)}, not {path.name}")
    rows = result.export_rows
    try:
        with atomic_path(path) as tmp:
            if suffix == ".csv":
                rows.to_csv(tmp, index=False)
            else:
                rows.to_parquet(tmp, index=False)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc}") from exc
    return len(rows)


# --------------------------------------------------------------------- for export


@dataclass
class RunWeights:
    """A run's ``pair_weights.parquet`` as ``export --run`` uses it: whether it has
    weights, and the pairs ``--drop-least-trusted`` drops."""

    path: Path
    weighted: bool
    dropped_pair_ids: np.ndarray | None = None  # bool mask by pair_id (--drop-least-trusted)
    least_trusted_threshold: float | None = None
    total_pairs: int = 0


def load_run_weights(run: str | Path, drop_least_trusted: float | None, needs_weights: bool) -> RunWeights:
    """Open ``RUN/pair_weights.parquet``; with ``drop_least_trusted`` (a percentage), mark
    that share of the pairs, taken from the top of the audit's ranking
    (:func:`least_trusted_order`). Only the ranking reads the whole file (three columns,
    24 bytes a pair); the rows themselves are streamed by :func:`pair_weight_batches`."""
    path = RunPaths(Path(run)).pair_weights
    if not path.is_file():
        raise UsageError(f"{run} has no {RunPaths.PAIR_WEIGHTS}: is it a finished training run?")
    try:
        handle = pq.ParquetFile(path)
        metadata = handle.schema_arrow.metadata or {}
        if META_WEIGHTED in metadata:
            weighted = metadata[META_WEIGHTED] == b"true"
        else:  # a file without the flag: weighted when its first weights are not all null
            first = handle.read_row_group(0, columns=["weight"]) if handle.num_row_groups else None
            weighted = first is not None and first.column("weight").null_count < first.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    if needs_weights and not weighted:
        raise UsageError(
            f"{run} was trained without meta-weighting: its pairs have no weights, so --min-weight and "
            "--drop-least-trusted cannot apply"
        )
    result = RunWeights(path=path, weighted=weighted, total_pairs=handle.metadata.num_rows)
    if drop_least_trusted:
        # the weight the run trained with; a file from before that column has the net's alone
        trust = "weight_used" if "weight_used" in handle.schema_arrow.names else "weight"
        table = handle.read(columns=["pair_id", trust, "loss"])
        pair_id = table.column("pair_id").to_numpy()
        weights = table.column(trust).to_numpy(zero_copy_only=False).astype(float)
        if trust == "weight_used":  # a row without it (a file written by other tools): the net's weight
            net = handle.read(columns=["weight"]).column("weight").to_numpy(zero_copy_only=False).astype(float)
            weights = np.where(np.isnan(weights), net, weights)
        loss = table.column("loss").to_numpy(zero_copy_only=False).astype(float)
        order = least_trusted_order(weights, loss, pair_id)
        count = int(np.floor(len(order) * drop_least_trusted / 100.0))
        mask = np.zeros(int(pair_id.max()) + 1 if len(pair_id) else 0, dtype=bool)
        mask[pair_id[order[:count]]] = True
        result.dropped_pair_ids = mask
        result.least_trusted_threshold = float(weights[order[count - 1]]) if count else None
    return result


def pair_weight_batches(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of ``pair_weights.parquet`` an export joins, a batch at a time."""
    columns = ["pair_id", "video_id", "caption", "caption_source", "caption_index", "weight", "loss"]
    yield from pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_rows, columns=columns)
