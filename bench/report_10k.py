"""Building `pixelwizard report` for a large synthetic run: N prompts (default 10,000) with every output a finished
job leaves (real zarr stores; MP4 stand-ins with their JSON and quality numbers, tests/conftest.py's make_outputs),
a computed event per output, and a second decode setting beside the run's. Times `write_report` (in process) and
the whole `pixelwizard report` call, and with --browser how long headless chromium takes to show the page and how
many elements its DOM holds.

    python bench/report_10k.py [--prompts 10000] [--dir /tmp/report-10k] [--browser] [--out results.jsonl]

The synthetic run is kept in --dir and reused when it is there (writing 30,000 zarr stores takes minutes).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from report import report  # noqa: E402
from scale import make_run  # noqa: E402

from pixelwizard.pipeline.report import write_report  # noqa: E402


def browser_load(page: Path, metric: str) -> dict[str, float]:
    """Seconds until headless chromium has drawn the first page of prompts, the elements in its DOM, and seconds
    to sort every prompt by a quality number and draw the first page again."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        start = time.perf_counter()
        driver.get(page.as_uri())  # returns once the page's scripts have run
        load = time.perf_counter() - start
        elements = driver.execute_script("return document.getElementsByTagName('*').length")
        start = time.perf_counter()
        Select(driver.find_element(By.ID, "sort")).select_by_value(metric)  # returns after the change handler
        sort = time.perf_counter() - start
        return {"load_seconds": round(load, 2), "dom_elements": elements, "sort_seconds": round(sort, 2)}
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/pixelwizard-scale"))
    parser.add_argument("--browser", action="store_true", help="also load the page in headless chromium")
    parser.add_argument("--out", help="append the result lines to this json-lines file")
    args = parser.parse_args()
    start = time.perf_counter()
    out = make_run(args.dir, args.prompts)
    print(f"synthetic run of {args.prompts} prompts ready in {time.perf_counter() - start:.0f} s", flush=True)
    for attempt in ("first", "again"):
        start = time.perf_counter()
        page, data = write_report(out)
        seconds = time.perf_counter() - start
        size = (page.parent / "data.js").stat().st_size
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        report(json.dumps({"bench": "report", "prompts": len(data["prompts"]), "build": attempt,
                           "seconds": round(seconds, 2), "data_js_mb": round(size / 1e6, 1),
                           "peak_rss_gib": round(rss, 2)}), args.out)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pixelwizard.workflow.cli", "report", str(out)], check=True,
                   capture_output=True)
    report(json.dumps({"bench": "report", "prompts": args.prompts, "build": "pixelwizard report (whole call)",
                       "seconds": round(time.perf_counter() - start, 2)}), args.out)
    if args.browser:
        measured = browser_load(page, f"metric:{data['main_tag']}:mhd_mse")
        report(json.dumps({"bench": "report page in chromium", "prompts": args.prompts, **measured}), args.out)


if __name__ == "__main__":
    main()
