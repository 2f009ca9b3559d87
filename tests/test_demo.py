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


def test_demo_keep_leaves_a_store_that_the_printed_ui_command_opens(tmp_path):
    import re
    import shlex

    from click.testing import CliRunner

    from webhook.cli import main
    from webhook.sessions.store import open_store
    from webhook.sessions.ui.app import create_ui_app

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "webhook.cli", "demo", "--keep"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    printed = re.search(r"^ +(whoexec ui --db \S+)$", result.stdout, re.MULTILINE)
    assert printed, result.stdout
    argv = shlex.split(printed.group(1))[1:]
    db = argv[argv.index("--db") + 1]
    assert db.startswith(f"sqlite:///{tmp_path}/whoexec-demo-")
    # the command's flags are the UI's own (a typo would fail here, not for the user)
    assert CliRunner().invoke(main, [*argv, "--help"]).exit_code == 0
    store = open_store(db)
    try:
        client = create_ui_app(store).test_client()
        html = client.get("/sessions").get_data(as_text=True)
        assert "alice@corp.example" in html
        (sid,) = re.findall(r'<td><a href="/sessions/([^"]+)">', html)
        timeline = client.get(f"/sessions/{sid}").get_data(as_text=True)
        assert "create exec by alice@corp.example" in timeline
        assert 'class="mark p-warning"' in timeline
    finally:
        store.close()
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, check=False)
    assert leftover.stdout == b"", "no demo process is left running, even with --keep"
