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
