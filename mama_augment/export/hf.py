"""``hf``: Parquet shards that Hugging Face ``datasets`` reads with an ``Image`` column.

``data/train-NNNNN.parquet``, one row per (video, caption) pair: ``image`` is the grid
JPEG (struct of ``bytes`` and ``path``, declared as an ``Image`` feature in the
schema's ``huggingface`` metadata, as ``datasets`` itself writes it), then the caption
and its provenance, weight and flags. With ``--no-images`` the struct holds the
grid's absolute path instead of its bytes, which ``datasets`` opens on access.
A dataset card (``README.md``) names the files, so ``load_dataset(OUT)`` works, and so
does ``load_dataset("parquet", data_files="OUT/data/*.parquet")``.
"""

from __future__ import annotations

import json
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from mama_augment.errors import ItemError
from mama_augment.export.base import ShardContext, ShardResult
from mama_augment.export.files import pointed_path, read_picture
from mama_augment.export.records import Sample
from mama_augment.fileio import atomic_path, atomic_write_text

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
_VALUE_COLUMNS = [
    ("key", pa.string()),
    ("video_id", pa.string()),
    ("caption", pa.string()),
    ("source", pa.string()),
    ("caption_index", pa.int32()),
    ("weight", pa.float64()),
    ("loss", pa.float64()),
    ("model", pa.string()),
    ("preset", pa.string()),
    ("prompt_name", pa.string()),
    ("prompt_sha256", pa.string()),
    ("seed", pa.int64()),
    ("split", pa.string()),
    ("concept", pa.string()),
]
_DTYPES = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.float64(): "float64"}


def hf_schema() -> pa.Schema:
    fields = [pa.field("image", IMAGE_TYPE)]
    fields += [pa.field(name, dtype) for name, dtype in _VALUE_COLUMNS]
    fields.append(pa.field("flags", pa.list_(pa.string())))
    # The features ``datasets`` reads back: Image for the picture, plain values for the
    # rest; ``flags`` is left to be inferred from its Arrow type (a list of strings).
    features = {"image": {"_type": "Image"}}
    features.update({name: {"dtype": _DTYPES[dtype], "_type": "Value"} for name, dtype in _VALUE_COLUMNS})
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})


SCHEMA = hf_schema()


def shard_name(index: int) -> str:
    return f"data/train-{index:05d}.parquet"


class HfFormat:
    name = "hf"
    units = ("pair",)
    summary = "Parquet shards with an Image column (Hugging Face datasets), one row per pair"

    def write_shard(self, ctx: ShardContext, samples: Sequence[Sample]) -> ShardResult:
        result = ShardResult()
        columns: dict[str, list] = {name: [] for name in SCHEMA.names}
        for sample in samples:
            video, entry = sample.video, sample.caption
            try:
                if ctx.config.images:
                    image = {"bytes": read_picture(ctx.work_folder, video.grid_path, "grid"), "path": f"{sample.key}.jpg"}
                else:
                    image = {"bytes": None, "path": pointed_path(ctx.work_folder, video.grid_path, "grid")}
            except ItemError as exc:
                result.fail(sample, exc)
                continue
            values = {
                "image": image, "key": sample.key, "video_id": video.video_id, "caption": entry.text,
                "source": entry.source, "caption_index": entry.caption_index, "weight": entry.weight,
                "loss": entry.loss, "model": entry.model, "preset": entry.preset, "prompt_name": entry.prompt_name,
                "prompt_sha256": entry.prompt_sha256, "seed": entry.seed, "split": video.split,
                "concept": video.concept, "flags": entry.flags,
            }
            for name in SCHEMA.names:
                columns[name].append(values[name])
            result.written += 1
        table = pa.Table.from_pydict(columns, schema=SCHEMA)
        name = shard_name(ctx.index)
        with atomic_path(ctx.out / name) as tmp:
            pq.write_table(table, tmp, compression="zstd", row_group_size=256)
        result.files.append(name)
        return result

    def finish(self, out, parts, shards: list[dict]) -> list[str]:
        card = (
            "---\n"
            "configs:\n"
            "- config_name: default\n"
            "  data_files:\n"
            "  - split: train\n"
            "    path: data/train-*.parquet\n"
            "---\n\n"
            "Video-text pairs exported by mama-augment: `image` is the keyframe grid of the video\n"
            "(keyframes in time order, left to right, top to bottom); `caption` is an original or a\n"
            "generated caption (`source`), with its provenance (`model`, `prompt_sha256`, `seed`), the\n"
            "weight a MAMA training run gave the pair (`weight`, mean 1) and its quality `flags`.\n"
            "`index.json` lists the export's options and counts.\n"
        )
        atomic_write_text(out / "README.md", card)
        return ["README.md"]
