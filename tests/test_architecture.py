"""The package's shape: imports run one way, and each registry is the one place to add to.

* No import cycle inside ``mama_augment``: every module is read with ``ast`` and every
  import counts, including those inside functions and under ``TYPE_CHECKING``.
* Only the CLI imports a stage or Typer; engines import no stage.
* A fake embedder, backbone and engine, each added to its registry alone, are taken by
  the stages, the option checks and the CLI's ``--help``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mama_augment
from mama_augment.manifest import KEYFRAMES, read_manifest, rows_to_table
from media import make_video
from train_helpers import make_workdir

PACKAGE = Path(mama_augment.__file__).parent
ROOT = PACKAGE.parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (a ``from pkg import name`` counts as
    ``pkg.name`` when that is a module, else as ``pkg``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_the_package():
    graph = _import_graph()
    assert len(graph) > 50 and "mama_augment.keyframes.stage" in graph["mama_augment.cli.keyframes"]
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_cli_imports_stages_and_typer():
    graph = _import_graph()
    stages = {m for m in graph if m.endswith(".stage") and m != "mama_augment.stage"}
    assert stages == {"mama_augment.keyframes.stage", "mama_augment.caption.stage", "mama_augment.quality.stage",
                      "mama_augment.export.stage"}
    for module, imports in graph.items():
        if not module.startswith("mama_augment.cli"):
            assert not imports & stages, f"{module} imports a stage"
    for module, path in _modules().items():
        if not module.startswith("mama_augment.cli"):
            tree = ast.parse(path.read_text())
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert not {n for n in names if n.split(".")[0] == "typer"}, f"{module} imports typer"


# ------------------------------------------------------------------ one registry each


class _FakeEmbedder:
    name = "fake"
    dim = 3

    def embed(self, images):
        rows = np.asarray([[float(np.mean(i[..., c])) + 1.0 for c in range(3)] for i in images], np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class _InProcessEngine:
    """An engine that runs everything in this process, one item at a time."""

    calls: list[str] = []

    def map_items(self, items, task, placement, schema):
        self.calls.append("map_items")
        for item in items:
            yield rows_to_table([task.run(item)], schema)

    def batch_workers(self, make_worker, placement, schema):  # pragma: no cover - not used by keyframes
        raise NotImplementedError


class _FakeEngineEntry:
    help = "everything in this process"

    def load(self):
        return _InProcessEngine()


def _help(command: str, setup: str) -> str:
    """``mama-augment COMMAND --help`` in a fresh process after ``setup`` ran."""
    code = textwrap.dedent(setup) + textwrap.dedent(f"""
        from typer.testing import CliRunner
        from mama_augment.cli import app
        print(CliRunner().invoke(app, [{command!r}, "--help"], terminal_width=400).output)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "400"})
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.replace("\u2502", " ").split())  # without the help panels' borders


def test_a_fake_embedder_and_engine_need_only_their_registries(tmp_path, monkeypatch):
    from mama_augment import embed, engines
    from mama_augment.caption.config import CaptionConfig
    from mama_augment.caption.stage import validate as validate_caption
    from mama_augment.keyframes.config import KeyframesConfig
    from mama_augment.keyframes.stage import run_keyframes

    monkeypatch.setitem(embed.EMBEDDERS, "fake", embed.EmbedderFactory(lambda options: _FakeEmbedder(), "mean colour"))
    monkeypatch.setitem(engines.ENGINES, "inline", _FakeEngineEntry())
    _InProcessEngine.calls.clear()
    for i in range(3):
        make_video(tmp_path / "in" / f"v{i}.mp4", num_frames=24, fps=12, seed=i)
    report = run_keyframes([tmp_path / "in"], tmp_path / "w", KeyframesConfig(embedder="fake", engine="inline",
                                                                              num_keyframes=3), progress=False)
    assert (report.done, report.failed) == (3, 0) and _InProcessEngine.calls == ["map_items"]
    rows = read_manifest(tmp_path / "w", KEYFRAMES).to_pylist()
    assert {r["embedder"] for r in rows} == {"fake"} and {r["embedding_dim"] for r in rows} == {3}
    validate_caption(CaptionConfig(engine="inline"))  # the caption stage takes it too

    text = _help("keyframes", """
        from mama_augment import embed, engines
        embed.EMBEDDERS["fake"] = embed.EmbedderFactory(lambda options: None, "mean colour")
        engines.ENGINES["inline"] = engines.EngineEntry("mama_augment.engines.local", "in this process")
    """)
    assert "fake (mean colour)" in text and "inline (in this process)" in text
    assert "inline (in this process)" in _help("caption", """
        from mama_augment import engines
        engines.ENGINES["inline"] = engines.EngineEntry("mama_augment.engines.local", "in this process")
    """)


def test_a_fake_backbone_needs_only_its_registry(tmp_path, monkeypatch):
    from mama_augment.train import backbones
    from mama_augment.train.config import TrainConfig
    from mama_augment.train.loop import run_train

    built = []

    def build(config, videos, workdir, device):
        from mama_augment.train.models import build_features_model

        built.append(config.backbone)
        return build_features_model(config, videos, workdir, device)

    monkeypatch.setitem(backbones.BACKBONES, "tiny",
                        backbones.Backbone(build, "keyframe_embeddings", "a test backbone"))
    workdir, captions = make_workdir(tmp_path, n_videos=40)
    config = TrainConfig(captions=str(captions), backbone="tiny", text_model="hashing", epochs=1, batch_size=8,
                         embed_dim=16, progress=False, meta_fraction=0.1)
    report = run_train(config, workdir)
    assert built == ["tiny"] and report.done == report.total > 0
    with pytest.raises(Exception, match="--backbone must be one of features, clip, tiny"):
        TrainConfig(captions="x.csv", backbone="nope").validate()

    assert "tiny = a test backbone" in _help("train", """
        from mama_augment.train import backbones
        backbones.BACKBONES["tiny"] = backbones.Backbone(None, "keyframe_embeddings", "a test backbone")
    """)
