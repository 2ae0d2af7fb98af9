"""The report in a real browser: Debian's chromium, headless, driven by selenium through chromedriver (.ci/run
installs both when missing). The tiny pipeline stops after LR; the preview gate's checkboxes save a selection file
that `generate --only` runs; the HR latents are decoded again with other patch settings; then every video of the
page loads with the right duration, the numbers it shows equal those in the videos' JSON, the stores and the event
log, sorting works, and the browser's console shows no error. A run of upscaled videos shows each input clip
beside its result, both playing, with the quality numbers of both."""

from __future__ import annotations

import math
import os
import shutil
import time
from fractions import Fraction
from pathlib import Path

import pytest
from conftest import PROMPTS, TAG, VIDEOS, copy_run, events, generate, pixelwizard, write_prompts
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from pixelwizard.io.latent_store import verify_store
from pixelwizard.io.sidecar import read_sidecar

pytestmark = pytest.mark.slow

OV0 = "p2w-ov0-24fps"  # the re-decode without patch overlap
DURATION = 9 / 24  # the tiny preset: 9 frames at 24 fps
CHOSEN = ("fox", "owl")  # ticked in the preview gate
IDS = [i for i, _ in PROMPTS]


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        message = "needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
        if os.environ.get("PIXELWIZARD_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver, downloads
    driver.quit()


def open_view(driver, out: Path, view: str) -> None:
    driver.get("about:blank")  # a fresh load: the page and its data.js, not a jump within the old one
    driver.get((out / "report" / "index.html").as_uri() + f"#{view}")


def assert_videos_load(driver, expected: set[str] | dict[str, float], timeout: float = 30) -> None:
    """The page's videos are `expected` (their src), and each one loads its metadata: readyState >= 1
    (HAVE_METADATA) and its duration (the tiny preset's, or the one `expected` gives)."""
    script = "return [...document.querySelectorAll('video')].map(v => [v.getAttribute('src'), v.readyState, " \
             "v.duration, v.error ? v.error.code : null])"
    deadline = time.monotonic() + timeout
    while True:
        found = driver.execute_script(script)
        drawn = len(found) >= len(expected)  # an empty page (not drawn yet, on a loaded machine) is no pass
        if drawn and all(ready >= 1 for _, ready, _, _ in found) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {src for src, *_ in found} == set(expected) and len(found) == len(expected)
    durations = expected if isinstance(expected, dict) else dict.fromkeys(expected, DURATION)
    for src, ready, duration, error in found:
        assert error is None and ready >= 1 and duration == pytest.approx(durations[src], abs=2e-3), \
            (src, ready, duration)


def assert_no_console_errors(driver) -> None:
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def shown_number(cell) -> float:
    """The exact value of a number the page shows, checked against its rounded text."""
    span = cell.find_element(By.CSS_SELECTOR, "[data-value]")
    value = float(span.get_attribute("data-value"))
    text = span.get_attribute("textContent")  # also inside a closed <details>
    assert float(text.removesuffix(" s").replace(",", "")) == pytest.approx(value, rel=1e-3, abs=1e-12)
    return value


def scalar_leaves(values: dict, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], float]:
    leaves = {}
    for key, value in values.items():
        if isinstance(value, dict):
            leaves.update(scalar_leaves(value, (*path, key)))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            leaves[(*path, key)] = value
    return leaves


def assert_metrics_shown(figure, sidecar: dict, required=("mhd_mse", "sharpness", "flicker.mean")) -> None:
    """The figure shows every number of the video's quality numbers (nested ones by dotted name), exactly."""
    shown = {tuple(cell.get_attribute("data-metric").split(".")): shown_number(cell)
             for cell in figure.find_elements(By.CSS_SELECTOR, "td[data-metric]")}
    assert {tuple(name.split(".")) for name in required} <= set(shown)
    assert shown == scalar_leaves(sidecar["metrics"])


def computed_seconds(out: Path) -> dict[tuple[str, str, str], float]:
    return {(e["stage"], e["id"], e["digest"]): e["seconds"] for e in events(out) if e["action"] == "computed"}


def decode_seconds(out: Path, seconds: dict, tag: str, prompt_id: str) -> float:
    """The computed event's seconds of the video on disk (the event with its JSON's digest)."""
    return seconds[("decode", prompt_id, read_sidecar(out / "decode" / tag / f"{prompt_id}.json")["digest"])]


def save_screenshot(driver, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(height, 6000))
    deadline = time.monotonic() + 5  # first frames shown (HAVE_CURRENT_DATA), not loading spinners
    while time.monotonic() < deadline and not driver.execute_script(
            "return [...document.querySelectorAll('video')].every(v => v.readyState >= 2)"):
        time.sleep(0.2)
    time.sleep(2)  # the players' controls show a spinner for a moment after the window's resize
    driver.save_screenshot(str(path))
    if os.environ.get("PIXELWIZARD_REPORT_SCREENSHOT"):  # a copy for people to look at
        shutil.copy(path, os.environ["PIXELWIZARD_REPORT_SCREENSHOT"])


def test_report_in_a_browser(weights, browser, tmp_path):
    driver, downloads = browser
    prompts = write_prompts(tmp_path / "prompts.jsonl", waves={"seed": 7}, market={"negative_prompt": "sunny"})
    out = tmp_path / "out"
    generate(weights, prompts, out, "--until", "lr", "--shard-size", "2")
    pixelwizard("report", out)

    # The preview gate: every LR preview plays; two are ticked and saved as the selection file.
    open_view(driver, out, "gate")
    assert_videos_load(driver, {f"../preview/{i}.mp4" for i in IDS})
    for prompt_id in CHOSEN:
        driver.find_element(By.CSS_SELECTOR, f'.pick[data-id="{prompt_id}"] input[type=checkbox]').click()
    save = driver.find_element(By.ID, "save-selection")
    assert save.text == "save selection.txt (2 ticked)"
    save.click()
    selection = downloads / "selection.txt"
    deadline = time.monotonic() + 10
    while not selection.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert selection.read_text() == "fox\nowl\n"
    assert_no_console_errors(driver)

    generate(weights, prompts, out, "--only", str(selection), "--shard-size", "2")
    pixelwizard("decode", out, "--overlap", "0", "--cores", "2", "--quiet")
    pixelwizard("report", out)
    seconds = computed_seconds(out)

    open_view(driver, out, "prompts")
    assert_videos_load(driver, {f"../preview/{i}.mp4" for i in IDS} |
                       {f"../decode/{t}/{i}.mp4" for t in (TAG, OV0) for i in CHOSEN})
    cards = {c.get_attribute("data-id"): c for c in driver.find_elements(By.CSS_SELECTOR, "article.prompt")}
    assert list(cards) == IDS
    for prompt_id, card in cards.items():
        assert card.find_element(By.CSS_SELECTOR, ".meta .seed").text == ("7" if prompt_id == "waves" else "0")
        assert_metrics_shown(card.find_element(By.CSS_SELECTOR, "figure.preview"),
                             read_sidecar(out / "preview" / f"{prompt_id}.json"))
        lr = verify_store(out / "lr" / f"{prompt_id}.zarr")
        lr_row = card.find_element(By.CSS_SELECTOR, 'tr[data-stage="lr"]')
        assert lr_row.find_element(By.CSS_SELECTOR, ".seed").get_attribute("textContent") == \
            str(lr["provenance"]["seed"])
        assert shown_number(lr_row.find_elements(By.TAG_NAME, "td")[2]) == seconds[("lr", prompt_id, lr["digest"])]
        for tag in (TAG, OV0):
            figure = card.find_element(By.CSS_SELECTOR, f'figure.decode[data-tag="{tag}"]')
            if prompt_id not in CHOSEN:
                assert "held --only: not among its ids" in figure.text
                continue
            sidecar = read_sidecar(out / "decode" / tag / f"{prompt_id}.json")
            caption = figure.find_element(By.TAG_NAME, "figcaption")
            assert shown_number(caption) == decode_seconds(out, seconds, tag, prompt_id)
            assert_metrics_shown(figure, sidecar, ("mhd_mse", "sharpness", "flicker.mean", "seam.overall"))
            sheet = figure.find_element(By.TAG_NAME, "img")
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", sheet) > 0
    cards["fox"].find_element(By.TAG_NAME, "summary").click()  # its stages' provenance, in the screenshot
    save_screenshot(driver, tmp_path / "report.png")

    # Sorting by a number: the slowest re-decode first, prompts without one last.
    Select(driver.find_element(By.ID, "sort")).select_by_value(f"decode-seconds:{OV0}")
    driver.find_element(By.ID, "desc").click()
    order = [c.get_attribute("data-id") for c in driver.find_elements(By.CSS_SELECTOR, "article.prompt")]
    redecode_s = {i: decode_seconds(out, seconds, OV0, i) for i in CHOSEN}
    assert order[:2] == sorted(CHOSEN, key=lambda i: -redecode_s[i]) and set(order[2:]) == {"waves", "market"}
    Select(driver.find_element(By.ID, "sort")).select_by_value(f"metric:{TAG}:mhd_mse")
    order = [c.get_attribute("data-id") for c in driver.find_elements(By.CSS_SELECTOR, "article.prompt")]
    mhd_mse = {i: read_sidecar(out / "decode" / TAG / f"{i}.json")["metrics"]["mhd_mse"] for i in CHOSEN}
    assert order[:2] == sorted(CHOSEN, key=lambda i: -mhd_mse[i])  # still descending
    assert_no_console_errors(driver)

    # The batch: outputs per stage and state, and the seconds of each stage's current outputs.
    open_view(driver, out, "batch")
    rows = {r.get_attribute("data-label"): r
            for r in driver.find_elements(By.CSS_SELECTOR, "#stage-table tr[data-label]")}
    done = {label: shown_number(row.find_element(By.CSS_SELECTOR, 'td[data-state="done"]'))
            for label, row in rows.items()}
    assert done == {"text": 4, "uncond": 2, "lr": 4, "preview": 4, "hr": 2, f"decode {TAG}": 2, f"decode {OV0}": 2}
    for tag in (TAG, OV0):
        total = sum(decode_seconds(out, seconds, tag, i) for i in CHOSEN)
        shown = shown_number(rows[f"decode {tag}"].find_element(By.CSS_SELECTOR, 'td[data-key="seconds"]'))
        assert shown == pytest.approx(total, abs=1e-3)
    assert_no_console_errors(driver)


def test_an_upscaled_video_plays_beside_its_input(upscaled_run, browser, tmp_path):
    driver, _ = browser
    out = copy_run(upscaled_run, tmp_path / "out")
    pixelwizard("report", out)
    open_view(driver, out, "prompts")
    expected = {}
    for prompt_id in ("fox", "saved", "still", *VIDEOS):
        for folder in ("input", "preview", f"decode/{TAG}"):
            sidecar = out / folder / f"{prompt_id}.json"
            if sidecar.exists():
                source = read_sidecar(sidecar)["provenance"].get("source", {})
                rate = Fraction(source.get("rate", 24))
                expected[f"../{folder}/{prompt_id}.mp4"] = float(read_sidecar(sidecar)["metrics"]["frames"] / rate)
    assert len([src for src in expected if src.startswith("../input/")]) == len(VIDEOS)
    assert_videos_load(driver, expected)
    cards = {c.get_attribute("data-id"): c for c in driver.find_elements(By.CSS_SELECTOR, "article.prompt")}
    for prompt_id, (name, *_) in VIDEOS.items():
        card = cards[prompt_id]
        assert name in card.find_element(By.CSS_SELECTOR, ".source").text
        input_figure = card.find_element(By.CSS_SELECTOR, "figure.input")
        assert_metrics_shown(input_figure, read_sidecar(out / "input" / f"{prompt_id}.json"))
        assert_metrics_shown(card.find_element(By.CSS_SELECTOR, f'figure.decode[data-tag="{TAG}"]'),
                             read_sidecar(out / "decode" / TAG / f"{prompt_id}.json"))
        media = card.find_element(By.CSS_SELECTOR, ".media")
        assert media.find_elements(By.TAG_NAME, "figure")[0] == input_figure  # the input first, the result beside
    assert not cards["fox"].find_elements(By.CSS_SELECTOR, "figure.input")
    cards["phone"].find_element(By.TAG_NAME, "summary").click()
    lr_row = cards["phone"].find_element(By.CSS_SELECTOR, 'tr[data-stage="lr"]')
    assert "lr_width=64" in lr_row.text and "vae" in lr_row.text  # its own recipe: the portrait anchor, encoded
    save_screenshot(driver, tmp_path / "upscaled.png")
    assert_no_console_errors(driver)
