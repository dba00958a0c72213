"""The local web app: its request functions in-process, and the Gradio page driven in a real headless browser."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from generate import api
from generate.app import (
    MAX_SAMPLES,
    Session,
    card_markdown,
    count,
    models_table,
    music_samples,
    new_session,
    sampling,
    text_samples,
)
from generate.checkpoint import shipped_models
from generate.config import PROJECT_ROOT, AppConfig
from generate.errors import UserError
from generate.music import audio

SHAKESPEARE, BACH = str(shipped_models()["shakespeare"]), str(shipped_models()["bach"])
FOLK = str(shipped_models()["folk"])
SETTINGS = {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "length": 40, "seed": 7}
# What the app's subprocess needs so that nothing calls home: no Gradio analytics or version check, no HF telemetry.
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    return new_session(AppConfig(out_dir=str(tmp_path_factory.mktemp("app") / "out"),
                                 checkpoints_dir=str(tmp_path_factory.mktemp("no_runs"))))


def test_app_listens_on_loopback_by_default() -> None:
    assert AppConfig().host == "127.0.0.1"


def test_list_models_includes_your_runs_and_reports_a_broken_one(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "best.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "mine").mkdir()
    shutil.copy(BACH, tmp_path / "mine" / "best.pt")
    listed = api.list_models(tmp_path)
    runs = {m["name"]: m for m in listed if m["origin"] == "your run"}
    assert runs.keys() == {"broken", "mine"}
    assert "card" not in runs["broken"] and "broken/best.pt" in runs["broken"]["error"]
    assert runs["mine"]["card"]["dataset"] == "bach"
    table = models_table(listed).splitlines()
    assert table[0] == "| model | dataset | tokenizer | parameters | validation loss (nats/token) | training steps |"
    mine = next(row for row in table if row.startswith("| mine (your run) |"))
    card = runs["mine"]["card"]
    assert f"| bach | melody | {card['parameters']:,} | {card['val_loss']:.3f} | {card['steps']} |" in mine
    assert any(row.startswith("| broken (your run) | error: ") for row in table)


def test_a_card_names_dataset_tokenizer_size_loss_and_steps(session: Session) -> None:
    bach = next(e for e in session.listed if e["path"] == BACH)
    text = card_markdown(bach)
    card = bach["card"]
    assert text.startswith("bach (shipped): ") and card["steps"] > 0 and card["val_loss"] > 0
    for shown in ("**dataset** bach", "**tokenizer** melody", f"**parameters** {card['parameters']:,}",
                  f"**validation loss (nats/token)** {card['val_loss']:.3f}", f"**training steps** {card['steps']}"):
        assert shown in text


def test_text_streams_the_library_sample(session: Session) -> None:
    """One generation path: sample i of the page is Model.sample with seed + i, arriving piece by piece."""
    states = [list(texts) for texts in text_samples(session, SHAKESPEARE, "ROMEO:", SETTINGS, 2)]
    assert len(states) > 4 and states[0] == ["ROMEO:"]  # the prompt first, then several pieces: it streamed
    model = api.load("shakespeare")
    assert states[-1] == [model.sample("ROMEO:", **{**SETTINGS, "seed": 7 + i})[0] for i in range(2)]


def test_music_writes_every_file_with_the_instrument(session: Session) -> None:
    import pretty_midi

    samples = music_samples(session, BACH, None, "violin", {**SETTINGS, "length": 32}, 2)
    assert len(samples) == 2 and samples[0]["title"].startswith("sample 0: ")
    for sample in samples:
        for kind, magic in (("mid", b"MThd"), ("wav", b"RIFF"), ("png", b"\x89PNG"), ("musicxml", b"<?xml")):
            assert Path(sample[kind]).read_bytes()[: len(magic)] == magic
        assert pretty_midi.PrettyMIDI(sample["mid"]).instruments[0].program == 40


def test_meter_and_key_reach_the_score(session: Session) -> None:
    """The page's meter/key boxes start a controlled model's pieces; a model without controls says why."""
    import music21

    sample = music_samples(session, FOLK, None, "", {**SETTINGS, "length": 64}, 1, " 6/8", "Em")[0]
    score = music21.converter.parse(sample["musicxml"])
    assert score.recurse().getElementsByClass("TimeSignature").first().ratioString == "6/8"
    key = score.recurse().getElementsByClass("KeySignature").first()  # <fifths>1</fifths><mode>minor</mode>
    assert (key.sharps, key.mode) == (1, "minor")
    with pytest.raises(UserError) as caught:
        music_samples(session, BACH, None, "", SETTINGS, 1, "6/8", "")
    assert "control tokens" in str(caught.value) and "\n" not in str(caught.value)


def test_bad_input_is_the_cli_line_before_any_work_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = new_session(AppConfig(out_dir=str(tmp_path / "out"), checkpoints_dir=str(tmp_path / "runs")))
    with pytest.raises(UserError, match=r"^instrument='kazoo' is not a General MIDI program"):
        monkeypatch.setattr(api.Model, "sample", lambda *a, **k: pytest.fail("generated before checking"))
        music_samples(session, BACH, None, "kazoo", SETTINGS, 1)
    monkeypatch.undo()
    upload = tmp_path / "gradio" / "0123abcd" / "my tune.mid"  # where Gradio keeps an upload: its own name, last
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"MThd this is not really MIDI")
    with pytest.raises(UserError) as caught:
        music_samples(session, BACH, str(upload), "", SETTINGS, 1)
    assert str(caught.value).startswith("primer my tune.mid is not a readable MIDI file")
    assert str(upload.parent) not in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UserError, match="character"):
        list(text_samples(session, SHAKESPEARE, "ROMEO: \u2211", SETTINGS, 1))
    with pytest.raises(UserError, match="not one of the listed models"):
        music_samples(session, "/etc/passwd", None, "", SETTINGS, 1)
    assert not (tmp_path / "out").exists()  # failed requests wrote nothing, not even an empty folder
    assert music_samples(session, BACH, None, "", {**SETTINGS, "length": 16}, 1)  # still works after the errors


def test_without_gradio_the_app_says_how_to_install_it() -> None:
    code = ("import sys, runpy; sys.modules['gradio'] = None; sys.argv = ['generate.app']; "
            "runpy.run_module('generate.app', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 2 and done.stderr == 'error: the app needs Gradio: pip install -e ".[app]" ' \
        '(or pip install "gru-generate[app]")\n'


# ---------------------------------------------------------------- the real browser


def _browser() -> tuple[str, str]:
    """Gradio, selenium, Debian's chromium and its driver (what .ci/run installs); skip naming what is missing."""
    for module, install in (("gradio", 'pip install -e ".[app]"'), ("selenium", 'pip install -e ".[dev]"')):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"{module} is not installed ({install})")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no chromium/chromedriver here (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture
def started_app(tmp_path: Path) -> Iterator[str]:
    """`python -m generate.app port=0` as a user starts it; the URL is read from what it prints."""
    _browser()
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    process = subprocess.Popen(
        [sys.executable, "-m", "generate.app", "port=0", f"out_dir={tmp_path / 'out'}",
         f"checkpoints_dir={tmp_path / 'runs'}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if line.startswith("generate app: open "):
                break
        assert seen and seen[-1].startswith("generate app: open http://127.0.0.1:"), "".join(seen)
        yield seen[-1].split("open ")[1].split()[0].rstrip("/")
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_the_page_in_a_headless_browser(started_app: str, tmp_path: Path) -> None:  # long: one session, checks in order
    browser, driver_path = _browser()
    import pretty_midi
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    page = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    wait = WebDriverWait(page, 180)
    js = page.execute_script

    def pick_model(name: str) -> None:
        page.find_element(By.XPATH, f"//fieldset[@id='model']//label[.//span[text()='{name} (shipped)']]").click()
        wait.until(lambda p: f"{name} (shipped): " in p.find_element(By.ID, "card").text)

    def type_into(selector: str, value: str) -> None:
        box = page.find_element(By.CSS_SELECTOR, selector)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)

    def error_line() -> str:
        shown = page.find_elements(By.CSS_SELECTOR, "#error")
        return shown[0].text if shown and shown[0].is_displayed() else ""

    try:
        page.get(started_app + "/")
        wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, "#generate"))
        # Everything the page loaded came from the app: no CDN, no web fonts from elsewhere.
        loaded = js("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith(started_app) for url in loaded), loaded

        # Bach: a piece with an audio player of a playable WAV, its piano roll and a .mid download.
        pick_model("bach")
        type_into("#length input", "64")
        instrument = page.find_element(By.CSS_SELECTOR, "#instrument input")
        instrument.click()
        instrument.send_keys(Keys.CONTROL, "a")
        instrument.send_keys("flute")  # the list narrows to flute and pan-flute; click the one wanted
        wait.until(lambda p: p.find_element(By.CSS_SELECTOR, "ul[role=listbox] li[aria-label='flute']")).click()
        wait.until(lambda p: not p.find_elements(By.CSS_SELECTOR, "ul[role=listbox]"))
        assert page.find_element(By.CSS_SELECTOR, "#instrument input").get_attribute("value") == "flute"
        page.find_element(By.ID, "generate").click()
        player = wait.until(lambda p: p.find_element(By.CSS_SELECTOR, "#audio-0 audio[src]"))
        assert player.get_attribute("src").endswith(".wav")
        wait.until(lambda p: js("return arguments[0].readyState >= 1", player))  # the browser read the WAV header
        assert js("return arguments[0].error === null && arguments[0].duration > 1", player)
        roll = page.find_element(By.CSS_SELECTOR, "#roll-0 img")
        wait.until(lambda p: js("return arguments[0].complete && arguments[0].naturalWidth > 0", roll))
        links = {a.get_attribute("download"): a.get_attribute("href")
                 for a in page.find_elements(By.CSS_SELECTOR, "#files-0 a[download]")}
        assert links.keys() == {"sample_0.mid", "sample_0.musicxml", "sample_0.wav"}
        with urllib.request.urlopen(links["sample_0.mid"], timeout=30) as response:
            midi = pretty_midi.PrettyMIDI(io.BytesIO(response.read()))
        assert midi.instruments[0].program == audio.INSTRUMENTS["flute"] and midi.instruments[0].notes
        assert error_line() == "" and not page.find_elements(By.CSS_SELECTOR, "#music-1")
        page.save_screenshot(str(tmp_path / "app_music.png"))

        # A corrupt primer: the CLI's one-line error in the page, named as uploaded, and the app keeps serving.
        corrupt = tmp_path / "corrupt.mid"
        corrupt.write_bytes(b"MThd this is not really MIDI")
        page.find_element(By.CSS_SELECTOR, "#primer input[type=file]").send_keys(str(corrupt))
        wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, "#primer td[aria-label='corrupt.mid']"))
        page.find_element(By.ID, "generate").click()
        wait.until(lambda p: error_line())
        assert error_line().startswith("error: primer corrupt.mid is not a readable MIDI file (")
        assert "\n" not in error_line() and not page.find_elements(By.CSS_SELECTOR, "#audio-0 audio[src]")
        page.save_screenshot(str(tmp_path / "app_error.png"))

        # Shakespeare: a character the model never saw is the CLI's line; then the text streams in.
        pick_model("shakespeare")
        type_into("#prompt textarea, #prompt input", "ROMEO: \u2211")
        page.find_element(By.ID, "generate").click()
        wait.until(lambda p: error_line().startswith("error: the text has 1 character(s) the model never saw"))
        type_into("#prompt textarea, #prompt input", "ROMEO:")
        type_into("#length input", "300")
        type_into("#seed input", "5")
        page.find_element(By.ID, "generate").click()
        expected = api.load("shakespeare").sample("ROMEO:", length=300, seed=5, temperature=0.8)[0]
        box = wait.until(lambda p: p.find_element(By.CSS_SELECTOR, "#text-0 textarea"))
        wait.until(lambda p: box.get_property("value") == expected)
        assert error_line() == "" and len(expected) > 250
        page.find_element(By.XPATH, "//button[.//span[text()='all models']] | //*[text()='all models']").click()
        table = wait.until(lambda p: p.find_element(By.CSS_SELECTOR, "#models table"))
        rows = [row.text for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert {row.split(" (shipped)")[0] for row in rows} >= {"bach", "jsb", "shakespeare"}, rows
        page.save_screenshot(str(tmp_path / "app_text.png"))
    finally:
        page.quit()
    if os.environ.get("GENERATE_SCREENSHOTS"):  # how docs/ got its screenshots: GENERATE_SCREENSHOTS=docs
        for name in ("app_music.png", "app_text.png", "app_error.png"):
            shutil.copy(tmp_path / name, Path(os.environ["GENERATE_SCREENSHOTS"]) / name)


def test_form_numbers_are_checked_like_the_cli() -> None:
    assert sampling(0.5, 3.0, 0.9, 100, 42) == {"temperature": 0.5, "top_k": 3, "top_p": 0.9, "length": 100, "seed": 42}
    for bad, message in (((1, 0, 1, None, 1), "length is empty"), ((1, 0, 1, 10, 1.5), "seed=1.5 is not a whole")):
        with pytest.raises(UserError, match=message):
            sampling(*bad)
    assert count(MAX_SAMPLES) == MAX_SAMPLES
    with pytest.raises(UserError, match=f"num_samples={MAX_SAMPLES + 1} must be 1..{MAX_SAMPLES}"):
        count(MAX_SAMPLES + 1)
