"""The run browser in a real headless browser (Debian's chromium and chromium-driver, driven by
selenium), against real Gunicorn and real Toil, with Basic auth: submit from the form, find
the run in the list, watch its page go RUNNING then COMPLETE with task bars and the log,
download an output, cancel another run from its page; a second user sees none of it.
Each test saves a screenshot of its last page under var/test-artifacts/."""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import DATA, ROOT, Server, kill_all_leaders, record_run, start_server, stop_server

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "var" / "test-artifacts"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
    reason="chromium and chromium-driver are not installed (scripts/system-deps installs them)",
)
USERS = {"alice": "alice-pw", "bob": "bob-pw"}


def auth(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import bcrypt

    root = tmp_path_factory.mktemp("ui")
    lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt()).decode()}" for user, pw in USERS.items()]
    (root / "htpasswd").write_text("\n".join(lines) + "\n")
    server = start_server(
        root / "data",
        {"WES_GATEWAY_AUTH_MODES": "basic", "WES_GATEWAY_HTPASSWD_FILE": str(root / "htpasswd")},
    )
    yield server
    stop_server(server)
    kill_all_leaders(server.data_dir)


@pytest.fixture
def browser(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        driver.save_screenshot(str(ARTIFACTS / f"{request.node.name}.png"))
    except WebDriverException:
        pass
    driver.quit()


def screenshot(driver: webdriver.Chrome, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def as_user(server: Server, user: str, path: str) -> str:
    host = server.base.removeprefix("http://")
    return f"http://{user}:{USERS[user]}@{host}{path}"


def wait_text(driver: webdriver.Chrome, element_id: str, texts: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = driver.find_element(By.ID, element_id).text
            if text in texts:
                return text
        except WebDriverException:
            pass  # the page is reloading
        time.sleep(0.3)
    raise AssertionError(f"#{element_id} never became one of {texts}")


def test_submit_watch_download_and_cancel(gateway: Server, browser: webdriver.Chrome) -> None:
    browser.get(as_user(gateway, "alice", "/ui/submit"))
    browser.find_element(By.ID, "workflow_attachment").send_keys(str(DATA / "slow_echo.cwl"))
    assert browser.find_element(By.ID, "workflow_url").get_attribute("value") == "slow_echo.cwl"
    Select(browser.find_element(By.ID, "workflow_type")).select_by_visible_text("CWL")
    Select(browser.find_element(By.ID, "workflow_type_version")).select_by_visible_text("v1.2")
    params = browser.find_element(By.ID, "workflow_params")
    params.clear()
    params.send_keys('{"seconds": 6, "message": "from the browser"')  # not JSON yet
    assert "Not valid JSON" in browser.find_element(By.ID, "error-workflow_params").text
    params.send_keys("}")
    assert browser.find_element(By.ID, "error-workflow_params").text == ""
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 30).until(expected_conditions.url_contains("/ui/runs/"))
    run_id = browser.current_url.rstrip("/").rsplit("/", 1)[1]

    # The run page follows it live: RUNNING, then COMPLETE, with a task bar and the log.
    wait_text(browser, "state", {"RUNNING", "COMPLETE"}, 120)
    assert wait_text(browser, "state", {"COMPLETE"}, 180) == "COMPLETE"
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.gantt rect.bar.ok"))
    screenshot(browser, "run-page")
    assert "slow_echo" in browser.find_element(By.CSS_SELECTOR, "svg.gantt").text
    assert "Resolved" in browser.find_element(By.ID, "log").text or browser.find_element(By.ID, "log").text
    # Download the output through its link and compare the bytes with the run's record.
    link = browser.find_element(By.CSS_SELECTOR, "ul.outputs a")
    downloaded = requests.get(link.get_attribute("href"), headers=auth("alice"), timeout=30)
    outputs = requests.get(f"{gateway.api}/runs/{run_id}", headers=auth("alice"), timeout=30).json()["outputs"]
    assert downloaded.content == Path(outputs["out"]["path"]).read_bytes() == b"from the browser\n"
    assert browser.find_element(By.ID, "ro-crate")

    # The run is in the list, with its state.
    browser.get(as_user(gateway, "alice", "/ui/"))
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-run="{run_id}"]')
    assert "COMPLETE" in row.text and "slow_echo.cwl" in row.text
    screenshot(browser, "run-list")

    # Cancel another run from its page.
    files = [("workflow_attachment", ("sleep.cwl", (DATA / "sleep.cwl").read_bytes()))]
    form = {"workflow_url": "sleep.cwl", "workflow_type": "CWL", "workflow_type_version": "v1.2"}
    form["workflow_params"] = json.dumps({"seconds": 600})
    napping = requests.post(f"{gateway.api}/runs", data=form, files=files, headers=auth("alice"), timeout=60)
    nap_id = napping.json()["run_id"]
    browser.get(as_user(gateway, "alice", f"/ui/runs/{nap_id}"))
    wait_text(browser, "state", {"RUNNING"}, 120)
    browser.find_element(By.ID, "cancel").click()
    assert wait_text(browser, "state", {"CANCELED"}, 90) == "CANCELED"


def test_a_refusal_is_shown_beside_its_field(gateway: Server, browser: webdriver.Chrome) -> None:
    browser.get(as_user(gateway, "alice", "/ui/submit"))
    browser.find_element(By.ID, "workflow_attachment").send_keys(str(DATA / "echo.cwl"))
    url = browser.find_element(By.ID, "workflow_url")
    url.clear()
    url.send_keys("missing.cwl")  # not among the files
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error-workflow_url").text)
    assert "missing.cwl" in browser.find_element(By.ID, "error-workflow_url").text


def test_another_user_sees_none_of_it(gateway: Server, browser: webdriver.Chrome) -> None:
    files = [("workflow_attachment", ("echo.cwl", (DATA / "echo.cwl").read_bytes()))]
    form = {"workflow_url": "echo.cwl", "workflow_type": "CWL", "workflow_type_version": "v1.2"}
    form["workflow_params"] = json.dumps({"message": "alice's"})
    run_id = requests.post(f"{gateway.api}/runs", data=form, files=files, headers=auth("alice"), timeout=60).json()[
        "run_id"
    ]
    browser.get(as_user(gateway, "bob", f"/ui/runs/{run_id}"))
    assert "Run not found" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(as_user(gateway, "bob", "/ui/"))
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-run="{run_id}"]')
    assert "bob" in browser.find_element(By.CSS_SELECTOR, ".who").text
    # And without credentials there is no page at all.
    assert requests.get(gateway.base + "/ui/", timeout=10).status_code == 401


def test_pages_are_light_and_need_no_third_party(gateway: Server) -> None:
    for path in ("/ui/", "/ui/submit"):
        page = requests.get(gateway.base + path, headers=auth("alice"), timeout=10)
        assert page.status_code == 200
        assets = [requests.get(gateway.base + f"/ui/static/{name}", timeout=10) for name in ("ui.css", "ui.js")]
        assert all(asset.status_code == 200 for asset in assets)
        weight = len(page.content) + sum(len(asset.content) for asset in assets)
        assert weight <= 150 * 1024, weight
        assert "http://" not in page.text.replace(gateway.base, "") and "https://" not in page.text


def test_token_mode_signs_in_with_an_httponly_strict_cookie(tmp_path: Path, browser: webdriver.Chrome) -> None:
    import os
    import subprocess
    import sys

    server = start_server(tmp_path / "data", {"WES_GATEWAY_AUTH_MODES": "token"})
    try:
        env = {**os.environ, "WES_GATEWAY_DATA_DIR": str(tmp_path / "data")}
        made = subprocess.run(
            [sys.executable, "-m", "wes_gateway.cli", "token", "create", "carol"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = made.stdout.strip().splitlines()[-1]
        # Without credentials, the pages send a browser to the login form.
        first = requests.get(server.base + "/ui/runs/x", allow_redirects=False, timeout=10)
        assert first.status_code == 303 and first.headers["Location"] == "../login"
        wrong = requests.post(server.base + "/ui/login", data={"token": "wes_nope"}, allow_redirects=False, timeout=10)
        assert wrong.status_code == 401 and "unknown or revoked" in wrong.text
        # In the browser: sign in, and the pages and their API calls carry the cookie.
        browser.get(server.base + "/ui/")
        assert browser.current_url.endswith("/ui/login")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "form button").click()
        WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/ui/"))
        assert "carol" in browser.find_element(By.CSS_SELECTOR, ".who").text
        cookie = browser.get_cookie("wes_gateway_ui")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert browser.execute_script("return document.cookie") == ""  # scripts cannot read it
        # The API takes the cookie as the token, for this browser's calls.
        status = browser.execute_script("return fetch(location.origin + '/ga4gh/wes/v1/runs').then(r => r.status)")
        assert status == 200
    finally:
        stop_server(server)


def test_a_run_of_500_tasks_stays_light(gateway: Server, browser: webdriver.Chrome) -> None:
    from wes_gateway import store

    store.open_database(f"sqlite:///{gateway.data_dir / 'wes.sqlite3'}")
    run_id = record_run(
        owner="alice",
        workflow_url="wide.cwl",
        state="COMPLETE",
        start_time="2026-12-01T10:00:00Z",
        end_time="2026-12-01T11:00:00Z",
    )
    for i in range(500):
        store.Task.create(
            run_id=run_id,
            task_id=f"kind-CWLJob:instance-{i:04d}",
            job_id=f"kind-CWLJob/instance-{i:04d}",
            name=f"align[{i}]",
            start_time=f"2026-12-01T10:{i % 60:02d}:00Z",
            end_time=f"2026-12-01T10:{i % 60:02d}:30Z",
            exit_code=0 if i % 50 else 1,
        )
    store.database.close()
    page = requests.get(gateway.base + f"/ui/runs/{run_id}", headers=auth("alice"), timeout=30)
    assets = sum(len(requests.get(gateway.base + f"/ui/static/{n}", timeout=10).content) for n in ("ui.css", "ui.js"))
    assert len(page.content) + assets <= 150 * 1024, len(page.content) + assets
    browser.get(as_user(gateway, "alice", f"/ui/runs/{run_id}"))
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.gantt rect.bar")
    assert len(bars) == 500 and len(browser.find_elements(By.CSS_SELECTOR, "svg.gantt rect.bar.failed")) == 10
    height = browser.find_element(By.CSS_SELECTOR, "svg.gantt").size["height"]
    assert height <= 3100  # 6 px a task: one long look, not 500 screens
