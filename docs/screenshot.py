"""Refresh docs/storefront.png: the storefront page on the demo market, in headless Chromium.

    ./dev run python docs/screenshot.py            # writes docs/storefront.png

It starts `python -m service --demo` on a free port with a fresh SQLite store in a temporary
folder (the painted market's features are cached in data/demo/, so only a first run paints
and encodes it, a minute or two), opens the page for the customer the demo names, uploads
the first of the demo's new works through the page's form, clicks a recommendation to show
similar works, and saves the window. Needs Debian's chromium and chromium-driver, as the
browser test does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
# The demo's one-artist customer and the artist of the new works it paints (see the README).
CUSTOMER = "03f3d779bbb3c3dc"
ARTIST = "9cd683c120f8a55a"
NEW_WORK = ROOT / "data" / "demo" / "new-works" / f"{ARTIST}-1.jpg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the service stopped before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the service was not ready within {seconds:.0f} s")


def capture(url: str, out: Path, width: int, height: int) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--hide-scrollbars"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        wait = WebDriverWait(driver, 60)
        started = time.monotonic()
        driver.get(f"{url}/ui/?user={CUSTOMER}&k=12")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#recommendations .card")) == 12)
        shown = time.monotonic() - started
        print(f"page opened to 12 recommendations shown: {shown:.2f} s")
        driver.find_element(By.ID, "file").send_keys(str(NEW_WORK))
        driver.find_element(By.ID, "upload-id").send_keys("new-painting-1")
        driver.find_element(By.ID, "upload-artist").send_keys(ARTIST)
        driver.find_element(By.ID, "upload-title").send_keys("New work")
        driver.find_element(By.CSS_SELECTOR, "#upload button").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#uploaded .card"))
        driver.find_element(By.CSS_SELECTOR, "#recommendations .card").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#similar .card"))
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(1)  # the last pictures' fallbacks
        out.write_bytes(driver.get_screenshot_as_png())
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "storefront.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2300)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as scratch:
        store = f"sqlite:///{Path(scratch) / 'demo.db'}"
        command = [sys.executable, "-m", "service", "--demo", "--port", str(port)]
        environment = {
            **os.environ,
            "CURATORNET_STORE_URL": store,
            "CURATORNET_LOG_LEVEL": "warning",
        }
        process = subprocess.Popen(command, cwd=ROOT, env=environment)
        try:
            wait_ready(url, process, seconds=1800)
            capture(url, args.out, args.width, args.height)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
