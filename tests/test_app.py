"""The local web app: its HTTP API in-process, and the whole page driven in a real headless browser (chromium)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from generate import api
from generate.app import serve
from generate.checkpoint import shipped_models
from generate.config import PROJECT_ROOT, AppConfig

SHAKESPEARE, BACH = str(shipped_models()["shakespeare"]), str(shipped_models()["bach"])


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app served in a thread on a free loopback port."""
    server = serve(AppConfig(port=0, out_dir=str(tmp_path_factory.mktemp("app_out")),
                             checkpoints_dir=str(tmp_path_factory.mktemp("no_runs"))))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()


def post(url: str, body: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_app_listens_on_loopback_by_default() -> None:
    assert AppConfig().host == "127.0.0.1"


def test_models_are_listed_with_cards(app_url: str) -> None:
    with urllib.request.urlopen(app_url + "/api/models", timeout=30) as response:
        listed = json.load(response)
    by_name = {m["name"]: m for m in listed["models"]}
    assert {"shakespeare", "bach", "jsb"} <= by_name.keys()
    card = by_name["bach"]["card"]
    assert by_name["bach"]["music"] and not by_name["shakespeare"]["music"]
    assert card["dataset"] == "bach" and card["parameters"] > 0 and card["steps"] > 0 and card["val_loss"] > 0
    assert listed["audio"] and "flute" in listed["instruments"]


def test_list_models_includes_your_runs_and_reports_a_broken_one(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "best.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "mine").mkdir()
    shutil.copy(BACH, tmp_path / "mine" / "best.pt")
    runs = {m["name"]: m for m in api.list_models(tmp_path) if m["origin"] == "your run"}
    assert runs.keys() == {"broken", "mine"}
    assert "card" not in runs["broken"] and "broken/best.pt" in runs["broken"]["error"]
    assert runs["mine"]["card"]["dataset"] == "bach"


def test_streamed_text_is_the_library_sample(app_url: str) -> None:
    """One generation path: sample i of the page is api.Model.sample with seed + i, streamed."""
    body = {"model": SHAKESPEARE, "prompt": "ROMEO:", "length": 40, "seed": 7, "num_samples": 2, "temperature": 0.8}
    status, raw = post(app_url + "/api/text", body)
    events = [json.loads(line) for line in raw.decode().splitlines()]
    assert status == 200 and len(events) > 4  # several pieces per sample: it streamed
    texts = ["".join(e["text"] for e in events if e["sample"] == i) for i in range(2)]
    model = api.load("shakespeare")
    for i in range(2):
        assert texts[i] == model.sample("ROMEO:", length=40, seed=7 + i, temperature=0.8)[0]


def test_bad_input_gets_the_cli_line_and_the_app_keeps_running(app_url: str) -> None:
    status, raw = post(app_url + "/api/text", {"model": SHAKESPEARE, "prompt": "ROMEO: \u2211"})
    assert status == 200 and json.loads(raw)["error"].startswith("the text has 1 character(s) the model never saw")
    status, raw = post(app_url + "/api/music", {"model": BACH, "temperature": "hot"})
    assert status == 400 and json.loads(raw) == {"error": "temperature='hot' is not a number"}
    status, raw = post(app_url + "/api/music", {"model": BACH, "length": 0})
    assert status == 400 and "length" in json.loads(raw)["error"]
    status, raw = post(app_url + "/api/music", {"model": "/etc/passwd"})
    assert status == 400 and "not one of the listed models" in json.loads(raw)["error"]
    for path in ("/files/../../etc/passwd", "/files/1/x.py", "/nothing"):
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(app_url + path, timeout=30)
    test_models_are_listed_with_cards(app_url)  # still serving


def test_music_request_writes_every_file(app_url: str) -> None:
    status, raw = post(app_url + "/api/music", {"model": BACH, "length": 32, "seed": 3, "instrument": "violin"})
    assert status == 200, raw
    sample = json.loads(raw)["samples"][0]
    for kind, magic in (("mid", b"MThd"), ("wav", b"RIFF"), ("png", b"\x89PNG"), ("musicxml", b"<?xml")):
        with urllib.request.urlopen(app_url + sample[kind], timeout=30) as response:
            assert response.read(len(magic)) == magic


# ---------------------------------------------------------------- the real browser


def _browser() -> tuple[str, str]:
    """Debian's chromium and its driver (what .ci/run installs); skip with the reason where they are missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver") or ("/usr/lib/chromium/chromedriver" if Path("/usr/lib/chromium/chromedriver").exists() else None)
    if not browser or not driver:
        pytest.skip("no chromium/chromedriver here (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture
def started_app(tmp_path: Path) -> Iterator[str]:
    """`python -m generate.app port=0` as a user starts it; the URL is read from what it prints."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "generate.app", "port=0", f"out_dir={tmp_path / 'out'}",
         f"checkpoints_dir={tmp_path / 'runs'}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        yield line.split("open ")[1].split()[0].rstrip("/")
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_the_page_in_a_headless_browser(started_app: str, tmp_path: Path) -> None:  # long: one browser session, three checks in order
    browser, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1500",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    page = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    wait = WebDriverWait(page, 120)
    try:
        page.get(started_app + "/")
        wait.until(lambda p: p.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")

        def generate() -> None:
            page.execute_script("delete document.getElementById('results').dataset.finished")
            page.find_element(By.ID, "generate").click()
            wait.until(lambda p: p.find_element(By.ID, "results").get_attribute("data-finished"))

        def set_field(field: str, value: str) -> None:
            box = page.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)

        # Bach: a piece with an audio player of a playable WAV, its piano roll and a .mid download.
        Select(page.find_element(By.ID, "model")).select_by_visible_text("bach (shipped)")
        set_field("length", "64")
        Select(page.find_element(By.ID, "instrument")).select_by_visible_text("flute")
        generate()
        assert page.find_element(By.ID, "error").text == ""
        player = page.find_element(By.CSS_SELECTOR, ".music-sample audio")
        assert player.get_attribute("src").endswith(".wav")
        wait.until(lambda p: p.execute_script("return arguments[0].readyState >= 1", player))  # metadata loaded
        assert page.execute_script("return arguments[0].error === null && arguments[0].duration > 1", player)
        roll = page.find_element(By.CSS_SELECTOR, ".music-sample img.piano-roll")
        wait.until(lambda p: p.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", roll))
        mid = page.find_element(By.CSS_SELECTOR, "a.download-mid").get_attribute("href")
        with urllib.request.urlopen(mid, timeout=30) as response:
            assert mid.endswith(".mid") and response.read(4) == b"MThd"
        page.save_screenshot(str(tmp_path / "app_music.png"))

        # A corrupt primer: the CLI's one-line error in the page, and the app keeps serving.
        corrupt = tmp_path / "corrupt.mid"
        corrupt.write_bytes(b"MThd this is not really MIDI")
        page.find_element(By.ID, "primer").send_keys(str(corrupt))
        generate()
        error = page.find_element(By.ID, "error").text
        assert error.startswith("error: primer ") and "corrupt.mid is not a readable MIDI file" in error
        assert "\n" not in error and not page.find_elements(By.CSS_SELECTOR, ".music-sample")
        page.save_screenshot(str(tmp_path / "app_error.png"))

        # Shakespeare: the prompt, then the generated text streams into the page.
        Select(page.find_element(By.ID, "model")).select_by_visible_text("shakespeare (shipped)")
        set_field("prompt", "ROMEO:")
        set_field("length", "200")
        set_field("seed", "5")
        generate()
        text = page.find_element(By.ID, "text-0").text
        assert text.startswith("ROMEO:") and len(text) > 150 and page.find_element(By.ID, "error").text == ""
        assert text == api.load("shakespeare").sample("ROMEO:", length=200, seed=5, temperature=0.8)[0].strip()
        page.save_screenshot(str(tmp_path / "app_text.png"))
    finally:
        page.quit()
    if os.environ.get("GENERATE_SCREENSHOTS"):  # how docs/ got its screenshots: GENERATE_SCREENSHOTS=docs
        for name in ("app_music.png", "app_text.png", "app_error.png"):
            shutil.copy(tmp_path / name, Path(os.environ["GENERATE_SCREENSHOTS"]) / name)
