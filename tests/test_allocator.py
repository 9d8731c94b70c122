"""CPU allocator settings: applied once on glibc, skipped when the user opts out or set MALLOC_* themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = "from main.device import resolve_device; import main.allocator as a; resolve_device('cpu'); print(a._applied)"


def applied(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ADAPMTL_MALLOC"}
    out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env={**clean, **env}, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_cpu_runs_keep_freed_memory_unless_the_user_says_otherwise():
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    assert applied() == "True"
    assert applied(ADAPMTL_MALLOC="default") == "False"
    assert applied(MALLOC_ARENA_MAX="2") == "False"  # the user's own glibc tuning wins
