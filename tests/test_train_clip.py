"""The ``clip`` backbone fine-tunes a (tiny, random) Hugging Face CLIP on keyframe JPEGs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mama_augment.manifest import KEYFRAMES, PartWriter, compact
from mama_augment.train.config import TrainConfig
from mama_augment.train.evaluate import evaluate_run
from mama_augment.train.loop import run_train

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["a", "red", "blue", "green", "dog", "car", "tree", "boat", "small", "large"]


def _tiny_clip(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", bos_token="<s>")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=3, pad_token_id=0, bos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def _workdir_with_frames(root: Path, n: int = 12) -> tuple[Path, Path]:
    from PIL import Image

    workdir = root / "work"
    rng = np.random.default_rng(0)
    rows, captions = [], []
    for i in range(n):
        video_id = f"clip{i:02d}"
        paths = []
        colour = rng.integers(0, 255, size=3)
        for k in range(int(rng.integers(1, 4))):
            rel = f"frames/{video_id}/k{k}.jpg"
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(colour + rng.normal(0, 20, size=(40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(workdir / rel)
            paths.append(rel)
        rows.append({"video_id": video_id, "status": "ok", "keyframe_paths": paths})
        captions.append({"video_id": video_id, "caption": f"a {WORDS[1 + i % 3]} {WORDS[4 + i % 4]}",
                         "split": "test" if i >= n - 3 else "train"})
    rows.append({"video_id": "clip99", "status": "ok", "keyframe_paths": ["frames/missing.jpg"]})
    PartWriter(workdir, KEYFRAMES).write(rows)
    compact(workdir, KEYFRAMES)
    path = root / "captions.csv"
    pd.DataFrame(captions).to_csv(path, index=False)
    return workdir, path


@pytest.mark.parametrize("meta_params", ["last", "all"])
def test_clip_backbone_trains_on_a_tiny_random_clip(tmp_path, meta_params):
    model_dir = _tiny_clip(tmp_path / "tiny-clip")
    workdir, captions = _workdir_with_frames(tmp_path)
    config = TrainConfig(captions=str(captions), backbone="clip", backbone_model=str(model_dir), epochs=2,
                         batch_size=4, lr=1e-3, meta_fraction=0.2, meta_params=meta_params, progress=False,
                         checkpoint_every=1)
    report = run_train(config, workdir)
    assert report.exit_code == 0 and report.done == report.total >= 2
    run = Path(report.extra["run"])
    weights = load_file(run / "model.safetensors")
    assert any(k.startswith("vision.") for k in weights) and "head.out.logit_scale" in weights
    initial = load_file(model_dir / "model.safetensors")
    # the image tower itself was fine-tuned, not only the heads
    key = next(k for k in initial if k.endswith("encoder.layers.0.mlp.fc1.weight") and k.startswith("vision_model"))
    assert not torch.equal(initial[key], weights["vision." + key[len("vision_model."):]])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert steps and all(np.isfinite(r["loss"]) and r["meta_loss"] is not None for r in steps)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["issue_video_without_frames"] == 1
    result = evaluate_run(run, split="test")
    assert result["videos"] == 3
