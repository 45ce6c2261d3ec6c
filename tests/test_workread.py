"""The one read side of a work folder (:mod:`mama_augment.workread`) and the
torch-free reading of annotation files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mama_augment

ROOT = Path(mama_augment.__file__).parent.parent


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_checking_annotation_files_does_not_import_torch(tmp_path):
    # `datasets check` reads files and picks a protocol: torch costs seconds and is not needed.
    (tmp_path / "caps.csv").write_text("video_id,caption,split\nv1,a dog runs,test\nv2,a cat sits,test\n")
    result = _run("""
        import sys
        import mama_augment.datasets.check as check
        assert 'torch' not in sys.modules, 'import'
        found = check.check_files(['caps.csv'])
        assert found.protocol == 'one-caption', found.protocol
        assert 'torch' not in sys.modules, 'check_files imported torch'
    """, tmp_path)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- one least-trusted ranking


def _pair_weights(run: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mama_augment.train.audit import META_WEIGHTED, PAIR_WEIGHTS_SCHEMA

    run.mkdir(parents=True, exist_ok=True)
    full = [{"caption_source": "original", "caption_index": None, "concept": None, "grid_path": None,
             "weight_raw": None, "mean_weight_last_epoch": None, "last_epoch_steps": 0, **r} for r in rows]
    table = pa.Table.from_pylist(full, schema=PAIR_WEIGHTS_SCHEMA).replace_schema_metadata({META_WEIGHTED: b"true"})
    pq.write_table(table, run / "pair_weights.parquet")
    return run


def test_export_drops_the_pairs_the_audit_ranks_least_trusted_even_on_ties(tmp_path):
    from mama_augment.train.audit import audit_run, load_run_weights

    # Written in descending pair_id order, with ties on weight and loss: the tie is
    # broken by pair_id in the audit, so export must break it the same way.
    rows = [{"pair_id": p, "video_id": f"v{p}", "caption": f"c{p}", "loss": loss, "weight": weight}
            for p, weight, loss in [(5, 0.2, 1.0), (4, 0.2, 1.0), (3, 0.2, 3.0), (2, 0.9, 1.0), (1, 1.5, 0.5),
                                    (0, 1.5, 0.5)]]
    run = _pair_weights(tmp_path / "runs" / "demo", rows)
    ranked = audit_run(run, top=10).ranked["pair_id"].tolist()
    assert ranked == [3, 4, 5, 2, 0, 1]
    for percent, count in ((34, 2), (50, 3), (84, 5)):
        weights = load_run_weights(run, percent, needs_weights=True)
        dropped = sorted(int(p) for p in weights.dropped_pair_ids.nonzero()[0])
        assert dropped == sorted(ranked[:count]), percent
