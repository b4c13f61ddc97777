"""The house's layering: no import cycle and no floor importing from above (tools/import_cycles.py)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def check(root):
    return subprocess.run([sys.executable, str(REPO / "tools" / "import_cycles.py"), str(root)],
                          capture_output=True, text=True, timeout=120)


def test_the_project_has_no_cycle_and_no_breach():
    result = check(REPO)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("0 cycles, 0 floor breaches")


def test_the_check_finds_cycles_and_breaches(tmp_path):
    (tmp_path / "mlp").mkdir()
    (tmp_path / "backends").mkdir()
    (tmp_path / "mlp" / "__init__.py").write_text("")
    (tmp_path / "mlp" / "loop.py").write_text("from . import history\n")
    (tmp_path / "mlp" / "history.py").write_text("def f():\n    from mlp.loop import fit\n")   # inside a function
    (tmp_path / "mlp" / "errors.py").write_text("import mlp.train\n")
    (tmp_path / "mlp" / "train.py").write_text("")
    (tmp_path / "backends" / "__init__.py").write_text("from mlp import scoring\n")
    (tmp_path / "mlp" / "scoring.py").write_text("")
    result = check(tmp_path)
    assert result.returncode == 1
    assert "cycle: mlp.history <-> mlp.loop" in result.stdout
    assert "floor: mlp.errors imports mlp.train" in result.stdout
    assert "floor: mlp.backends imports mlp.scoring" in result.stdout
    assert result.stdout.strip().endswith("1 cycles, 2 floor breaches")
