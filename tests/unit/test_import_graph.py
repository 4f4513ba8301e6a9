"""The server does not import the load generator (webcall_bench/) nor what only it needs (numpy, matplotlib):
`pip install .` without the `bench` extra must serve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_ONLY = ("webcall_bench", "numpy", "matplotlib")


def test_no_module_under_webcall_imports_the_load_generator_or_its_deps() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+(" + "|".join(BENCH_ONLY) + r")\b", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "webcall").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_importing_every_server_module_loads_none_of_them() -> None:
    code = (
        "import importlib, pkgutil, sys, webcall\n"
        "for m in pkgutil.walk_packages(webcall.__path__, 'webcall.'):\n"
        "    if not m.name.endswith(('__main__', '_fanout')):\n"
        "        importlib.import_module(m.name)\n"
        f"print(sorted(k for k in sys.modules if k.split('.')[0] in {BENCH_ONLY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_webcall_bench_without_its_deps_is_a_clear_error() -> None:
    code = ("import sys\nsys.modules['numpy'] = None\n"  # as if numpy were not installed
            "from webcall.server.cli import main\nmain(['bench', '--help'])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "needs 'numpy'" in out.stderr and "Traceback" not in out.stderr
