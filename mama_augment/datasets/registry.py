"""Every annotation format by name: its reader, how it is recognised, an example.

The CLI takes its ``--captions-format`` choices and the ``mama-augment datasets``
listing from :data:`FORMATS`. Detection tries the formats in this order and takes the
first that recognises the file, so the more specific layouts come first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mama_augment.datasets import lists, lsmdc, msrvtt, msvd, pairs, paragraph, vatex, webvid
from mama_augment.datasets.base import Part, Source


@dataclass(frozen=True)
class Format:
    name: str
    benchmark: str
    files: str
    reader: Callable[[Source], Part]
    detect: Callable[[Source], bool]
    example: str


def _format(*args) -> tuple[str, Format]:
    fmt = Format(*args)
    return fmt.name, fmt


FORMATS: dict[str, Format] = dict([
    _format("msrvtt", "MSR-VTT", "train_val_videodatainfo.json, test_videodatainfo.json, MSRVTT_data.json",
            msrvtt.read_json, msrvtt.detect_json,
            "mama-augment train --captions train_val_videodatainfo.json --captions test_videodatainfo.json"),
    _format("msrvtt-jsfusion", "MSR-VTT 1k-A test (one caption per video)", "MSRVTT_JSFUSION_test.csv",
            msrvtt.read_jsfusion, msrvtt.detect_jsfusion,
            "mama-augment train --captions MSRVTT_data.json --captions MSRVTT_train.9k.csv --captions MSRVTT_JSFUSION_test.csv"),
    _format("msrvtt-categories", "MSR-VTT category names", "category.txt",
            msrvtt.read_categories, msrvtt.detect_categories,
            "mama-augment train --captions train_val_videodatainfo.json --captions category.txt"),
    _format("activitynet", "ActivityNet Captions (paragraphs)", "train.json, val_1.json",
            paragraph.read_activitynet, paragraph.detect_activitynet,
            "mama-augment train --captions train.json --captions val_1.json"),
    _format("activitynet-ids", "ActivityNet Captions split lists", "train_ids.json, val_ids.json",
            lists.read_json_ids, lists.detect_json_ids,
            "mama-augment train --captions train.json --captions val_1.json --captions train_ids.json --captions val_ids.json"),
    _format("didemo", "DiDeMo (paragraphs)", "train_data.json, val_data.json, test_data.json",
            paragraph.read_didemo, paragraph.detect_didemo,
            "mama-augment train --captions train_data.json --captions val_data.json --captions test_data.json"),
    _format("vatex", "VATEX", "vatex_training_v1.0.json, vatex_validation_v1.0.json",
            vatex.read, vatex.detect,
            "mama-augment train --captions vatex_training_v1.0.json --captions vatex_validation_v1.0.json"),
    _format("mama", "this project's captions table", "captions.csv / .jsonl / .parquet (video_id, caption[, split, concept])",
            pairs.read_mama, pairs.detect_mama,
            "mama-augment train --captions captions.csv"),
    _format("clip-vip", "CLIP-ViP / MAMA release (also VindLU / UMT)", "train9k.jsonl, test1ka.jsonl, msrvtt_ret_train9k.json",
            pairs.read_clip_vip, pairs.detect_clip_vip,
            "mama-augment train --captions train9k.jsonl --captions test1ka.jsonl"),
    _format("msvd-json", "MSVD (CLIP4Clip raw-captions saved as JSON)", "raw-captions.json",
            msvd.read_json, msvd.detect_json,
            "mama-augment train --captions raw-captions.json --captions train_list.txt --captions val_list.txt --captions test_list.txt"),
    _format("webvid", "WebVid-2M / 10M", "results_2M_train.csv, results_2M_val.csv",
            webvid.read, webvid.detect,
            "mama-augment train --captions results_2M_train.csv --captions results_2M_val.csv"),
    _format("lsmdc", "LSMDC", "LSMDC16_annos_training.csv, LSMDC16_annos_val.csv, LSMDC16_challenge_1000_publictect.csv",
            lsmdc.read, lsmdc.detect,
            "mama-augment train --captions LSMDC16_annos_training.csv --captions LSMDC16_annos_val.csv "
            "--captions LSMDC16_challenge_1000_publictect.csv"),
    _format("split-list", "split lists (MSVD, DiDeMo, MSR-VTT 9k/7k, any)", "train_list.txt, MSRVTT_train.9k.csv",
            lists.read_text_list, lists.detect_text_list,
            "mama-augment train --captions AllVideoDescriptions.txt --captions train_list.txt --captions test_list.txt"),
    _format("msvd", "MSVD", "AllVideoDescriptions.txt",
            msvd.read_descriptions, msvd.detect_descriptions,
            "mama-augment train --captions AllVideoDescriptions.txt --captions train_list.txt --captions val_list.txt "
            "--captions test_list.txt"),
])  # fmt: skip
