"""`whoexec demo`, the README's first command, as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_pipeline_and_cleans_up(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "webhook.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "STANDING IN FOR FALCO" in out
    assert (
        "[Warning] Read sensitive file untrusted: attribution=verified user=alice@corp.example"
        in out
    )
    assert "learnt from token, admission, audit" in out
    assert "Exec not attributed by the webhook" in out and "bob@corp.example" in out
    assert "Exec session without identity" in out
    assert list(Path(tmp_path).iterdir()) == [], "temporary files are removed"
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, check=False)
    assert leftover.stdout == b"", "no demo process is left running"
