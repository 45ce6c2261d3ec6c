"""WebVid-2M / 10M as it is distributed.

``results_2M_train.csv``, ``results_2M_val.csv``, ``results_10M_train.csv``: a header
row and one video per row, with the columns ``videoid, contentUrl, duration,
page_dir, name`` (10M adds ``page_idx``; the order does not matter). ``name`` is the
caption. Downloads are stored as ``<page_dir>/<videoid>.mp4``, so the id is
``page_dir/videoid`` (the id matching also finds a flat ``<videoid>.mp4``). The split
comes from the file name.
"""

from __future__ import annotations

from mama_augment.datasets.base import Part, Source, header_fields, read_table, split_from_name, unusable
from mama_augment.errors import UsageError


def detect(source: Source) -> bool:
    fields = set(header_fields(source))
    return {"videoid", "name"} <= fields and bool({"contenturl", "page_dir", "duration"} & fields)


def read(source: Source) -> Part:
    table = read_table(source)
    columns = {c.strip().lower(): c for c in table.columns}
    missing = [c for c in ("videoid", "name") if c not in columns]
    if missing:
        raise UsageError(f"{source.path}: a WebVid file needs the columns videoid and name (missing {', '.join(missing)})")
    split = split_from_name(source.name)
    ids = table[columns["videoid"]].str.strip()
    if "page_dir" in columns:
        page_dir = table[columns["page_dir"]].str.strip()
        ids = ids.where(page_dir == "", page_dir + "/" + ids)
    part = Part(source.path, "webvid")
    part.video_ids = ids.tolist()
    part.captions = table[columns["name"]].str.strip().tolist()
    part.splits = [split] * len(part.video_ids)
    part.concepts = [None] * len(part.video_ids)
    bad = sum(1 for v in part.video_ids if not v or v.endswith("/"))
    if bad:
        source.problems.add("malformed_record", f"{source.name}: rows without videoid", bad)
        keep = [i for i, v in enumerate(part.video_ids) if v and not v.endswith("/")]
        for name in ("video_ids", "captions", "splits", "concepts"):
            column = getattr(part, name)
            setattr(part, name, [column[i] for i in keep])
    if not len(part):
        raise unusable(source, "rows")
    return part
