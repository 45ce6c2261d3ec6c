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

import json
import time
from typing import BinaryIO, Sequence

from mama_augment.errors import ItemError
from mama_augment.export.base import ShardContext, ShardResult
from mama_augment.export.files import read_picture
from mama_augment.export.records import Sample
from mama_augment.fileio import atomic_path


BLOCK = 512
RECORD = 20 * BLOCK  # tar archives end on a whole record, as tar(1) and Python's tarfile write them


def _ustar_template() -> bytearray:
    header = bytearray(BLOCK)
    header[100:108] = b"0000644\0"  # mode
    header[108:116] = b"0000000\0"  # uid
    header[116:124] = b"0000000\0"  # gid
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"  # POSIX ustar magic and version
    return header


_TEMPLATE = _ustar_template()


class TarWriter:
    """A POSIX ustar archive of regular files, written straight to a file.

    Member names here are short ASCII (``KEY.EXT``), so a plain ustar header holds
    them; building that header directly is several times faster than ``tarfile``,
    which is most of the cost of a shard of small pictures.
    """

    def __init__(self, handle: BinaryIO, mtime: int):
        self.handle = handle
        self.mtime = b"%011o\0" % mtime

    def add(self, name: str, data: bytes) -> None:
        encoded = name.encode("ascii")
        if len(encoded) > 100:
            raise ValueError(f"tar member name too long: {name}")
        header = bytearray(_TEMPLATE)
        header[0:len(encoded)] = encoded
        header[124:136] = b"%011o\0" % len(data)
        header[136:148] = self.mtime
        header[148:156] = b"        "
        header[148:156] = b"%06o\0 " % sum(header)
        self.handle.write(header)
        self.handle.write(data)
        padding = -len(data) % BLOCK
        if padding:
            self.handle.write(bytes(padding))

    def close(self) -> None:
        self.handle.write(bytes(2 * BLOCK))
        end = self.handle.tell()
        if end % RECORD:
            self.handle.write(bytes(RECORD - end % RECORD))


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
            with open(tmp, "wb", buffering=1 << 20) as handle:
                tar = TarWriter(handle, mtime)
                for sample in samples:
                    try:
                        members = self._members(ctx, sample)
                    except ItemError as exc:
                        result.fail(sample, exc)
                        continue
                    for member_name, data in members:
                        tar.add(member_name, data)
                    result.written += 1
                tar.close()
        result.files.append(name)
        return result

    def _members(self, ctx: ShardContext, sample: Sample) -> list[tuple[str, bytes]]:
        """Every member of one sample, read before any is written (no half samples)."""
        video = sample.video
        members: list[tuple[str, bytes]] = []
        keyframe_exts: list[str] = []
        if ctx.config.images:
            members.append((f"{sample.key}.jpg", read_picture(ctx.work_folder, video.grid_path, "grid")))
            if ctx.unit == "video" and ctx.config.keyframes:
                for rank, path in enumerate(video.keyframe_paths):
                    ext = f"kf{rank:02d}.jpg"
                    members.append((f"{sample.key}.{ext}", read_picture(ctx.work_folder, path, "keyframe")))
                    keyframe_exts.append(ext)
        if sample.caption is not None:
            members.append((f"{sample.key}.txt", sample.caption.text.encode("utf-8")))
        meta = json.dumps(sample_json(sample, keyframe_exts), ensure_ascii=False, separators=(",", ":"))
        members.append((f"{sample.key}.json", meta.encode("utf-8")))
        return members

    def finish(self, out, parts, shards: list[dict]) -> list[str]:
        return []
