"""Build a tiny, randomly initialised LLaVA (model + tokenizer + processor) in a folder.

No vision-language model with weights can be downloaded here, so the caption tests and
the caption benchmark use this one: about half a million parameters, built in seconds,
loadable by transformers *and* by vLLM. Its captions are random text; what the tests check is the plumbing.

    python tests/tiny_llava.py /tmp/tiny-llava      # build once, print the folder
"""

from __future__ import annotations

import atexit
import json
import shutil
import string
import sys
import tempfile
from pathlib import Path

IMAGE_SIZE = 56
PATCH_SIZE = 14
IMAGE_SEQ_LENGTH = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16 image tokens
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# OpenAI-style content parts (vLLM passes {"type": "image"} / {"type": "text"}); plain
# string content works too. Newlines are written as {{ '\n' }} because literal
# newlines right after block tags are trimmed by the template engine.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ['image', 'image_url', 'image_pil'] %}<image>{{ '\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] != 'user' %}{{ eos_token }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_CORPUS = [
    "A person walks along a path and then turns to look at the camera.",
    "In a sentence, describe the process in the video.",
    "Write a caption sentence for the video in order from left to right, top to bottom.",
    "The image is a grid of frames from a video, in temporal order.",
    "USER: ASSISTANT: a man cooks food in a kitchen, a dog runs on grass.",
    string.printable,
]


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )


def _rename_vision_keys_for_vllm(folder: Path) -> None:
    """transformers 5 saves ``vision_tower.embeddings.*``; vLLM wants ``vision_tower.vision_model.*``."""
    from safetensors.torch import load_file, save_file

    for path in folder.glob("*.safetensors"):
        tensors = load_file(str(path))
        renamed = {}
        for key, value in tensors.items():
            head, sep, tail = key.partition("vision_tower.")
            if sep and not tail.startswith("vision_model."):
                key = f"{head}vision_tower.vision_model.{tail}"
            renamed[key] = value.contiguous()
        save_file(renamed, str(path), metadata={"format": "pt"})


def build_tiny_llava(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random LLaVA to ``folder`` and return it."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=64,
    )
    text = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=IMAGE_SEQ_LENGTH,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    _rename_vision_keys_for_vllm(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # Plain sampling defaults: the stage passes its own.
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                    "pad_token_id": tokenizer.pad_token_id})
    )
    return folder


_CACHED: Path | None = None


def tiny_llava_dir() -> Path:
    """One tiny LLaVA per process (tests share it), removed at exit."""
    global _CACHED
    if _CACHED is None or not (_CACHED / "config.json").exists():
        root = Path(tempfile.mkdtemp(prefix="tiny-llava-"))
        atexit.register(shutil.rmtree, root, True)
        _CACHED = build_tiny_llava(root / "model")
    return _CACHED


if __name__ == "__main__":
    print(build_tiny_llava(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tiny-llava-")))


def make_keyframes_workdir(workdir: str | Path, num_videos: int = 4, rows: int = 2, cols: int = 2,
                           failed: int = 1, size: tuple[int, int] = (96, 72)) -> Path:
    """A work folder with a tiny ``keyframes.parquet``: ``num_videos`` ok rows with JPEG
    grids (generated, fixed colours) and ``failed`` failed rows without a grid."""
    from PIL import Image, ImageDraw

    from mama_augment.manifest import KEYFRAMES, PartWriter, compact

    workdir = Path(workdir)
    (workdir / "grids").mkdir(parents=True, exist_ok=True)
    records = []
    for number in range(num_videos):
        video_id = f"vid{number:04d}"
        image = Image.new("RGB", size, ((number * 53) % 256, (number * 97) % 256, 128))
        draw = ImageDraw.Draw(image)
        cell_w, cell_h = size[0] // cols, size[1] // rows
        for cell in range(rows * cols):
            x, y = (cell % cols) * cell_w, (cell // cols) * cell_h
            draw.rectangle([x + 2, y + 2, x + 2 + (cell * 5) % cell_w, y + cell_h - 3], fill=(255, 255 - cell * 20, 0))
        grid_path = f"grids/{video_id}.jpg"
        image.save(workdir / grid_path, quality=90)
        records.append({
            "video_id": video_id, "path": f"/videos/{video_id}.mp4", "status": "ok", "media_type": "video",
            "keyframe_paths": [f"frames/{video_id}/{i:02d}.jpg" for i in range(rows * cols)],
            "grid_path": grid_path, "grid_rows": rows, "grid_cols": cols,
        })
    for number in range(failed):
        records.append({"video_id": f"bad{number:04d}", "path": f"/videos/bad{number}.mp4", "status": "failed",
                        "error_kind": "decode_error", "error": "cannot decode"})
    PartWriter(workdir, KEYFRAMES).write(records)
    compact(workdir, KEYFRAMES)
    return workdir
