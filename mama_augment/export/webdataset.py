"""``webdataset``: POSIX tar shards in the WebDataset layout.

A sample is the group of consecutive tar members that share a key, the member name up
to the first dot; what follows is the member's extension (``000000042.kf03.jpg`` is
key ``000000042``, extension ``kf03.jpg``). Keys here are the zero-padded sample
numbers, so they never hold a dot whatever the ``video_id`` is; the id is in the JSON.

* unit ``video`` (default): ``KEY.jpg`` the grid, ``KEY.kf00.jpg``... the keyframes
  in time order, ``KEY.json`` the video's metadata and every caption with provenance,
  weight and flags;
* unit ``pair``: ``KEY.jpg`` the grid, ``KEY.txt`` one caption, ``KEY.json`` its
  metadata: the layout of image-text loaders such as open_clip's.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from typing import Sequence

from mama_augment.errors import ItemError
from mama_augment.export.base import ShardContext, ShardResult
from mama_augment.export.files import read_picture
from mama_augment.export.records import Sample
from mama_augment.fileio import atomic_path


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sample_json(sample: Sample, keyframe_exts: list[str]) -> dict:
    data = {"key": sample.key, **sample.video.metadata()}
    if sample.caption is not None:
        data["caption"] = sample.caption.provenance()
    else:
        data["captions"] = [entry.provenance() for entry in sample.video.captions]
    data["keyframes"] = keyframe_exts
    return data


class WebDatasetFormat:
    name = "webdataset"
    units = ("video", "pair")
    summary = "tar shards (grid .jpg, keyframes .kfNN.jpg, .json; pair unit: .jpg .txt .json)"

    def write_shard(self, ctx: ShardContext, samples: Sequence[Sample]) -> ShardResult:
        result = ShardResult()
        name = shard_name(ctx.index)
        mtime = int(time.time())
        with atomic_path(ctx.out / name) as tmp:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                for sample in samples:
                    try:
                        members = self._members(ctx, sample)
                    except ItemError as exc:
                        result.fail(sample, exc)
                        continue
                    for member_name, data in members:
                        info = tarfile.TarInfo(member_name)
                        info.size = len(data)
                        info.mtime = mtime
                        info.mode = 0o644
                        tar.addfile(info, io.BytesIO(data))
                    result.written += 1
        result.files.append(name)
        return result

    def _members(self, ctx: ShardContext, sample: Sample) -> list[tuple[str, bytes]]:
        """Every member of one sample, read before any is written (no half samples)."""
        video = sample.video
        members: list[tuple[str, bytes]] = []
        keyframe_exts: list[str] = []
        if ctx.config.images:
            members.append((f"{sample.key}.jpg", read_picture(ctx.workdir, video.grid_path, "grid")))
            if ctx.unit == "video" and ctx.config.keyframes:
                for rank, path in enumerate(video.keyframe_paths):
                    ext = f"kf{rank:02d}.jpg"
                    members.append((f"{sample.key}.{ext}", read_picture(ctx.workdir, path, "keyframe")))
                    keyframe_exts.append(ext)
        if sample.caption is not None:
            members.append((f"{sample.key}.txt", sample.caption.text.encode("utf-8")))
        meta = json.dumps(sample_json(sample, keyframe_exts), ensure_ascii=False, separators=(",", ":"))
        members.append((f"{sample.key}.json", meta.encode("utf-8")))
        return members

    def finish(self, out, parts, shards: list[dict]) -> list[str]:
        return []
