"""`lmtune ui` in a real browser: Debian's chromium, driven by Selenium through chromium-driver (both
installed by `make test` when missing; no browser is downloaded). Set LMTUNE_UI_SCREENSHOTS=DIR to
write a screenshot of each page there (docs/ui/ holds the ones docs/ui.md shows)."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from test_ui import tiny_config

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="apt-get install chromium chromium-driver (make test does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui(tmp_path, tiny_llama):
    import uvicorn

    from lmtune.api import ui_app

    config = tiny_config(tmp_path, tiny_llama, save_steps=2, epochs=40)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(ui_app(tmp_path / "runs", tmp_path / "configs"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", config, tmp_path / "runs"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def until(predicate, timeout=120.0):
    """predicate's first true value; an element missing or replaced (the page is loading, htmx swapped
    it) counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError("timed out")


def shot(driver, name: str) -> None:
    folder = os.environ.get("LMTUNE_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def unlabelled_controls(driver) -> list:
    """Form controls without a label, and buttons without text: what a screen reader cannot name."""
    return driver.execute_script("""
        const bad = [];
        document.querySelectorAll('input, select, textarea').forEach(e => { if (!e.labels || !e.labels.length) bad.push(e.outerHTML); });
        document.querySelectorAll('button').forEach(b => { if (!b.textContent.trim()) bad.push(b.outerHTML); });
        return bad;""")


def test_start_watch_stop_resume_and_close_the_page_in_a_browser(ui, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    base, config, runs = ui
    browser.get(f"{base}/new")
    assert unlabelled_controls(browser) == []
    Select(browser.find_element(By.ID, "config")).select_by_visible_text(config)
    browser.find_element(By.ID, "config").send_keys(Keys.TAB, Keys.ENTER)  # "Load it", by keyboard
    until(lambda: browser.find_element(By.ID, "f-train-lr").get_attribute("value") == "0.005")  # the form, from the file
    assert unlabelled_controls(browser) == []
    seed = browser.find_element(By.ID, "f-train-seed")
    seed.clear()
    seed.send_keys("x")  # a bad value: the CLI's message, live
    until(lambda: "train.seed: Input should be a valid integer" in browser.find_element(By.ID, "check").text)
    seed.clear()
    seed.send_keys("1")
    browser.find_element(By.ID, "run_name").send_keys("run1")
    until(lambda: "--output-dir" in browser.find_element(By.ID, "check").text)  # the exact command and YAML, live
    until(lambda: "seed: 1" in browser.find_element(By.ID, "yaml").text)
    until(lambda: "peak" in browser.find_element(By.ID, "plan").text, timeout=180)  # lmtune plan's estimate
    until(lambda: "trained-on tokens" in browser.find_element(By.ID, "data").text, timeout=180)  # lmtune data's rows
    shot(browser, "new-run")
    browser.execute_script("document.getElementById('check-title').scrollIntoView()")
    shot(browser, "new-run-plan")
    browser.find_element(By.ID, "run_name").send_keys(Keys.ENTER)  # submitted from the keyboard
    until(lambda: "/runs/run1" in browser.current_url)
    # The chart gains points while the run trains (from its event stream).
    points = 'return window.runChart ? window.runChart.steps.length : 0'
    first = until(lambda: browser.execute_script(points))
    until(lambda: browser.execute_script(points) > first + 2)
    assert unlabelled_controls(browser) == []
    shot(browser, "run-training")
    until(lambda: list((runs / "run1" / "checkpoints").glob("checkpoint-*")))
    browser.find_element(By.XPATH, "//button[starts-with(normalize-space(), 'Stop')]").click()
    until(lambda: '"state": "interrupted"' in (runs / "run1" / "status.json").read_text())
    browser.refresh()
    assert browser.find_element(By.ID, "state").text == "interrupted"
    # Resume for two epochs in all: change the saved config (a resume may train longer or shorter).
    cfg = runs / "run1" / "config.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw["train"]["epochs"] = 2
    cfg.write_text(yaml.safe_dump(raw))
    browser.refresh()
    browser.find_element(By.XPATH, "//button[normalize-space()='Resume']").click()
    until(lambda: browser.current_url.endswith("/runs/run1?message=resumed"))  # a free slot: it starts at once
    # Close the page while it trains: the run goes on and finishes without it.
    browser.get("about:blank")
    until(lambda: '"state": "finished"' in (runs / "run1" / "status.json").read_text(), timeout=240)
    browser.get(f"{base}/runs/run1")
    assert browser.find_element(By.ID, "metrics").text  # the final metrics table
    until(lambda: len(browser.execute_script("return window.evalChart[0]")) >= 2)  # zero-shot and final evaluations
    # A chat with the finished run, streamed through the router `lmtune serve` has.
    browser.find_element(By.ID, "message").send_keys("a gorgeous, witty film")
    browser.find_element(By.ID, "with-base").click()  # and the base model's answer beside it
    browser.find_element(By.XPATH, "//button[normalize-space()='Send']").click()
    until(lambda: browser.execute_script("return baseHistory.length") == 2, timeout=120)
    assert browser.find_element(By.ID, "answer").text.strip() and browser.find_element(By.ID, "base-column").is_displayed()
    assert "error" not in browser.find_element(By.ID, "base-answer").text  # (the tiny random base may answer with nothing)
    assert unlabelled_controls(browser) == []
    shot(browser, "run-finished")
    browser.get(base)
    until(lambda: "run1" in browser.find_element(By.ID, "runs").text)
    assert "finished" in browser.find_element(By.ID, "runs").text
    assert unlabelled_controls(browser) == []
    shot(browser, "runs")
    browser.find_element(By.CSS_SELECTOR, "input[name=run][value=run1]").click()
    browser.find_element(By.XPATH, "//button[normalize-space()='Compare the chosen runs']").click()
    until(lambda: "/compare?run=run1" in browser.current_url)
    assert browser.execute_script("return window.compareChart.points[0]") > 0
    shot(browser, "compare")
