"""Regenerate docs/ui.png: the demo's session in `whoexec ui`, in headless Chromium.

    python tools/ui_screenshot.py [--out docs/ui.png]

Runs `whoexec demo --keep`, serves its store with `whoexec ui` on a free loopback port,
and photographs the session page. Needs Debian's chromium and chromium-driver, and
selenium (the dev extras).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parent.parent
WHOEXEC = [sys.executable, "-m", "webhook.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TMPDIR": tmp}
        demo = subprocess.run(
            [*WHOEXEC, "demo", "--keep"], capture_output=True, text=True, env=env, check=True
        )
        found = re.search(r"whoexec ui --db (\S+)", demo.stdout)
        if not found:
            sys.exit(f"the demo printed no ui command:\n{demo.stdout}")
        log = Path(tmp) / "ui.log"
        with log.open("wb") as stderr:
            ui = subprocess.Popen(
                [*WHOEXEC, "ui", "--db", found.group(1), "--bind", "127.0.0.1:0"],
                stderr=stderr,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 30
            while not (port := re.search(r"Listening at: \S+:(\d+)", log.read_text())):
                if time.monotonic() > deadline or ui.poll() is not None:
                    sys.exit(f"whoexec ui did not start:\n{log.read_text()}")
                time.sleep(0.1)
            url = f"http://127.0.0.1:{port.group(1)}"
            options = webdriver.ChromeOptions()
            options.binary_location = shutil.which("chromium") or "chromium"
            for flag in ("--headless=new", "--no-sandbox", "--window-size=1400,980"):
                options.add_argument(flag)
            browser = webdriver.Chrome(
                service=Service(shutil.which("chromedriver") or "chromedriver"), options=options
            )
            try:
                browser.get(url + "/sessions")
                browser.find_element(By.CSS_SELECTOR, "#sessions td a").click()
                browser.find_element(By.ID, "timeline")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(args.out))
            finally:
                browser.quit()
        finally:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
