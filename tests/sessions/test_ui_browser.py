"""The session explorer in headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium), against a real ``whoexec ui`` process over a store the real consumer filled.

The timeline's screenshot is written to ``test-output/ui-session-timeline.png`` (or
``$WHOEXEC_TEST_OUTPUT``) for a reviewer to look at.
"""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import http_ok
from tests.servers import ServerProcess

from .uistore import ALICE, XSS_COMMAND, XSS_POD, XSS_USER, FilledStore, fill_store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent
TOKEN = "browser-test-token-0123456789abcdef"


def ui_server(db: str, log: Path, token: str = "") -> ServerProcess:
    """``whoexec ui --bind 127.0.0.1:0``, answering once its worker has booted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
    env["WHOEXEC_STATE_DIR"] = str(log.parent / "ui-state")  # who signed in, with a token
    if token:
        env["WHOEXEC_UI_TOKEN"] = token
    server = ServerProcess(
        [
            sys.executable,
            "-m",
            "webhook.cli",
            "ui",
            "--db",
            db,
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
        log,
        env,
    )
    server.wait_until(
        lambda: http_ok(lambda: http.client.HTTPConnection("127.0.0.1", server.port), "/healthz"),
        "whoexec ui",
    )
    return server


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> FilledStore:
    where = tmp_path_factory.mktemp("ui-browser")
    return fill_store(where, f"sqlite:///{where}/whoexec.db")


@pytest.fixture(scope="module")
def ui(filled, tmp_path_factory) -> Iterator[ServerProcess]:
    server = ui_server(filled.url, tmp_path_factory.mktemp("ui-log") / "ui.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("headless Chromium is needed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-background-networking",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def console_errors(browser) -> list[str]:
    """What the page logged as errors: a CSP violation or a failed load shows here."""
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def no_dialog(browser) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        browser.switch_to.alert  # noqa: B018 - raises when there is none
    except NoAlertPresentException:
        return True
    return False


def arrive(browser, path_and_query: str) -> None:
    """Wait until a click or a submit has navigated (Selenium does not wait for that)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(expected_conditions.url_contains(path_and_query))


def output_dir() -> Path:
    where = Path(os.environ.get("WHOEXEC_TEST_OUTPUT", ROOT / "test-output"))
    where.mkdir(parents=True, exist_ok=True)
    return where


def test_each_page_loads_without_a_console_error(browser, ui, filled):
    from selenium.webdriver.common.by import By

    browser.get_log("browser")  # start clean
    for path, heading in [
        ("/users", "Users"),
        ("/sessions", "Exec sessions"),
        ("/findings", "Findings"),
        (f"/sessions/{filled.alice}", "Exec session"),
        (f"/audit/{filled.bob_audit_id}", "Audit event"),
    ]:
        browser.get(ui.url + path)
        assert browser.find_element(By.TAG_NAME, "h1").text == heading, path
        assert console_errors(browser) == [], path
        # the stylesheet loaded: the header is dark (its colour comes only from ui.css)
        header = browser.find_element(By.TAG_NAME, "header")
        assert header.value_of_css_property("background-color") == "rgba(29, 35, 42, 1)"


def test_sessions_filter_by_user_in_the_form(browser, ui):
    from selenium.webdriver.common.by import By

    browser.get(ui.url + "/sessions")
    users = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#sessions td.user")]
    assert ALICE in users and XSS_USER in users
    field = browser.find_element(By.NAME, "user")
    field.send_keys(ALICE)
    field.submit()
    arrive(browser, "user=alice%40corp.example")  # a URL to share
    users = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#sessions td.user")]
    assert users == [ALICE]


def test_a_session_opens_as_a_timeline_of_audit_event_commands_and_alerts(browser, ui, filled):
    from selenium.webdriver.common.by import By

    browser.get(ui.url + f"/sessions?user={ALICE}")
    browser.find_element(By.CSS_SELECTOR, "#sessions td a").click()
    arrive(browser, f"/sessions/{filled.alice}")
    audit = browser.find_element(By.CSS_SELECTOR, ".audit").text
    assert f"create exec by {ALICE} from 10.0.8.14" in audit and "/bin/bash" in audit
    labels = [
        t.get_attribute("textContent")
        for t in browser.find_elements(By.CSS_SELECTOR, "#timeline g.row > text.label > tspan")
    ]
    assert labels[0].startswith(f"create exec by {ALICE}")
    assert [label.split()[0] for label in labels[1:]] == ["4242", "4300", "4310"]
    assert "cat /etc/shadow" in labels[2] and "miner --pool x" in labels[3]
    marks = browser.find_elements(By.CSS_SELECTOR, "#timeline circle.mark")
    assert sorted(m.get_attribute("class") for m in marks) == [
        "mark audit",
        "mark p-critical",
        "mark p-notice",
        "mark p-warning",
    ]
    # marks go left to right in time: audit, the shell's alert, the file read, the binary
    xs = [float(m.get_attribute("cx")) for m in marks]
    assert xs == sorted(xs)
    rules = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#alerts td:nth-child(3)")]
    assert rules == [
        "Terminal shell in container",
        "Read sensitive file untrusted",
        "Drop and execute new binary in container",
    ]
    svg = browser.find_element(By.ID, "timeline")
    shot = output_dir() / "ui-session-timeline.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000 and svg.size["height"] > 100


@pytest.mark.parametrize("page", ["/sessions", "/users", "/findings", "/sessions/{hostile}"])
def test_hostile_text_renders_as_text_and_runs_nothing(browser, ui, filled, page):
    from selenium.webdriver.common.by import By

    browser.get(ui.url + page.format(hostile=filled.hostile))
    assert no_dialog(browser)
    assert browser.title != "pwned"
    assert browser.execute_script("return document.querySelectorAll('img, script').length") == 0
    text = browser.find_element(By.TAG_NAME, "main").text
    if page.startswith("/sessions/"):
        assert browser.find_element(By.ID, "command").text == XSS_COMMAND
        assert XSS_POD in text and XSS_USER in text
    elif page == "/sessions":
        assert XSS_COMMAND in text and XSS_POD in text
    elif page == "/users":
        assert XSS_USER in text
    else:
        assert XSS_COMMAND in text  # bob's exec, in the finding's detail


def test_with_a_token_the_browser_must_sign_in(browser, filled, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    guarded = ui_server(filled.url, tmp_path / "ui.log", token=TOKEN)
    try:
        browser.get(guarded.url + "/sessions?user=" + ALICE)
        assert "/login" in browser.current_url
        assert browser.find_elements(By.ID, "sessions") == []
        browser.find_element(By.ID, "token").send_keys("not-the-token")
        browser.find_element(By.ID, "sign-in").click()
        arrive(browser, "/login")
        WebDriverWait(browser, 30).until(
            expected_conditions.presence_of_element_located((By.ID, "wrong-token"))
        )
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "sign-in").click()
        # back where the browser was going, signed in
        arrive(browser, "/sessions")
        back = urllib.parse.urlsplit(browser.current_url)
        assert (back.path, urllib.parse.parse_qs(back.query)) == ("/sessions", {"user": [ALICE]})
        users = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#sessions td.user")]
        assert users == [ALICE]
        assert TOKEN not in str(browser.get_cookies())
    finally:
        guarded.stop()
