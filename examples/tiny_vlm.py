"""Build a tiny, randomly initialised LLaVA (model + tokenizer + processor) in a folder.

About half a million parameters, built in seconds on a CPU, loadable by transformers
*and* by vLLM. Its captions are random text: it is for trying the pipeline end to end
(the quick start in the README) and for the tests, not for real captions.

    python examples/tiny_vlm.py mama-work/tiny-vlm     # build it, print the folder
    mama-augment caption -w mama-work --model mama-work/tiny-vlm --backend transformers

Needs transformers and tokenizers (installed with the tool).
"""

from __future__ import annotations

import json
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


if __name__ == "__main__":
    print(build_tiny_llava(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tiny-vlm-")))
