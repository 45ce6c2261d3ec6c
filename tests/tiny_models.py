"""Tiny, randomly initialised Hugging Face models saved to a folder, for tests.

No pretrained CLIP exists on PyPI and tests have no model hub, so code paths that load
a CLIP from ``--embed-model`` are exercised with a model built from a small config.
The weights are random (seeded), so only shapes, plumbing and determinism can be
checked, never quality.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLIP_IMAGE_SIZE = 32
TINY_CLIP_PROJECTION_DIM = 16


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE (GPT-2, CLIP) uses for bytes."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def _write_tiny_clip_tokenizer(folder: Path) -> int:
    """Write a CLIP BPE vocabulary (single bytes, no merges) and return its size.

    CLIP marks the end of a word with ``</w>`` on its last token, so every byte exists
    both plain and with the marker; without merges each word becomes one token per byte.
    """
    tokens = []
    for char in _byte_level_alphabet():
        tokens += [char, char + "</w>"]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return len(vocab)


def make_tiny_clip(folder: str | Path, with_tokenizer: bool = False, seed: int = 0) -> Path:
    """Save a tiny random ``CLIPModel`` and its image processor config in ``folder``.

    Vision tower: hidden 32, 2 layers, 2 heads, 32 px images, 8 px patches; both
    towers project to 16 dimensions. With ``with_tokenizer`` a CLIP tokenizer (byte
    vocabulary, no merges) is saved too, so text code paths can run. Returns the folder.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tiny_clip_tokenizer(folder) if with_tokenizer else 514
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            projection_dim=TINY_CLIP_PROJECTION_DIM,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TINY_CLIP_IMAGE_SIZE,
            patch_size=8,
            projection_dim=TINY_CLIP_PROJECTION_DIM,
        ),
        projection_dim=TINY_CLIP_PROJECTION_DIM,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)

    # The image processor config CLIP checkpoints ship, shrunk to the tiny image size.
    processor_config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": TINY_CLIP_IMAGE_SIZE},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": TINY_CLIP_IMAGE_SIZE, "width": TINY_CLIP_IMAGE_SIZE},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor_config, indent=2))

    if with_tokenizer:
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
        tokenizer.save_pretrained(folder)
    return folder
