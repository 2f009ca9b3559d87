"""The import contract (pyproject.toml, docs/architecture.md): the wings, their pure cores
and the ground floor import only what they may, and a wrong import breaks the build."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    # the package under `where` is analysed, ahead of the installed one
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_the_package_keeps_every_contract():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "bad_import", "contract", "edge"),
    [
        (
            "attribution/lineage.py",
            "import sqlite3",
            "The pure cores do no IO",
            "webhook.attribution.lineage -> sqlite3",
        ),
        (
            "admission/exec.py",
            "import time",
            "The pure cores do no IO",
            "webhook.admission.exec -> time",
        ),
        (
            "admission/server.py",
            "from webhook.attribution import pipeline",
            "The admission webhook imports nothing of the other wings",
            "webhook.admission.server -> webhook.attribution.pipeline",
        ),
        (
            "attribution/app.py",
            "from webhook.admission import wsgi",
            "The Falco path imports nothing of the admission webhook",
            "webhook.attribution.app -> webhook.admission.wsgi",
        ),
        (
            "sessions/store/sql.py",
            "from webhook.attribution.spool import Spool",
            "The session records import nothing of the other wings",
            "webhook.sessions.store.sql -> webhook.attribution.spool",
        ),
        (
            "sessions/report.py",
            "from webhook.attribution import falco",
            "The session records import nothing of the other wings",
            "webhook.sessions.report -> webhook.attribution.falco",
        ),
        (
            "attribution/plugin_fields.py",
            "import time",
            "The pure cores do no IO",
            "webhook.attribution.plugin_fields -> time",
        ),
        (
            "sessions/auditlog.py",
            "from webhook.attribution.pipeline import Pipeline",
            "The session records import nothing of the other wings",
            "webhook.sessions.auditlog -> webhook.attribution.pipeline",
        ),
        (
            "sessions/commands.py",
            "from webhook import cli",
            "Nothing under the wings imports cli or demo",
            "webhook.sessions.commands -> webhook.cli",
        ),
        (
            "settings.py",
            "from webhook.admission.decide import AdmissionPolicy",
            "The ground floor imports no wing",
            "webhook.settings -> webhook.admission.decide",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, bad_import, contract, edge):
    shutil.copytree(
        ROOT / "webhook", tmp_path / "webhook", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "webhook" / module).open("a") as source:
        source.write(f"\n{bad_import}  # noqa\n")
    run = lint_imports(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    said = " ".join(run.stdout.split())  # long contract names are wrapped
    assert re.search(re.escape(contract) + r"(?:(?!KEPT|BROKEN).)* BROKEN", said), run.stdout
    assert edge in run.stdout
