"""The storefront page (`/ui`) in a real browser: headless Chromium, driven by Selenium,
against `python -m service` on a real port with a small painted market and the shipped model,
which takes pictures.

Debian's `chromium` and `chromium-driver` are used as installed (`.ci/run` installs them);
the driver's path is given, so Selenium Manager never runs and nothing is downloaded. The
test is skipped, saying why, only when neither is installed.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from curatornet.painter import looks, paint
from tests.service.helpers import DEFAULT_MODEL, LiveService, random_item

CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTISTS = 4
WORKS_PER_ARTIST = 6
CUSTOMER = "collector"  # bought three works of artist-0
K = 6
# A picture the app itself serves, standing in for a work's own `metadata.image_url`.
APP_PICTURE = "/ui/favicon.svg"
WAIT_S = 30
STYLES = looks(np.random.default_rng(16).standard_normal((ARTISTS, 8)))


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def painted_market() -> list[dict]:
    """Works painted in each artist's look, as POST /items takes them (so each has its stored
    picture, which the page must prefer to the `image_url` every other one also names)."""
    works = []
    for artist, look in enumerate(STYLES):
        for n in range(WORKS_PER_ARTIST):
            work_id = f"work-{artist}-{n}"
            metadata = {"title": f"Study {n} by artist {artist}"}
            if n % 2:
                metadata["image_url"] = APP_PICTURE
            picture = base64.b64encode(jpeg(paint(look, work_id, size=128))).decode()
            works.append(
                {
                    "id": work_id,
                    "artist_id": f"artist-{artist}",
                    "image_b64": picture,
                    "metadata": metadata,
                }
            )
    return works


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    store = tmp_path_factory.mktemp("storefront") / "store.db"
    live = LiveService(f"sqlite:///{store}", CURATORNET_MODEL_DIR=str(DEFAULT_MODEL))
    try:
        assert live.client.post("/items", json={"items": painted_market()}).status_code == 200
        bought = {"user_id": CUSTOMER, "item_ids": ["work-0-0", "work-0-1", "work-0-2"]}
        assert live.client.post("/purchases", json=bought).status_code == 201
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    binary = shutil.which("chromium")
    if binary is None or not CHROMEDRIVER.exists():
        pytest.skip(
            "no browser: Debian's chromium and chromium-driver are not installed "
            "(.ci/run installs them: apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1600")
    # Every request the page makes, to check none leaves its origin.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, condition: Callable[[WebDriver], object], message: str) -> None:
    WebDriverWait(driver, WAIT_S).until(condition, message)


def loaded_pictures(driver: WebDriver, selector: str) -> int:
    """How many pictures under `selector` have loaded with a width. One that failed (a 404
    from /items/{id}/image) has none until the page's fallback for it has loaded."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".filter(i => i.complete && i.naturalWidth > 0).length",
        selector,
    )


def picture_sources(driver: WebDriver, selector: str) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(i => i.src)", selector
    )


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_the_storefront_shows_recommends_finds_similar_and_takes_uploads(
    service: LiveService, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(f"{service.url}/")
    assert urlsplit(browser.current_url).path == "/ui/"
    wait(browser, lambda d: "works in the index" in d.find_element(By.ID, "model").text, "model")
    # 24 works, 3 of them one-of-a-kind and sold: they leave the index.
    assert "21 works in the index" in browser.find_element(By.ID, "model").text

    # Choose the customer among the few the page offers, with k from the form.
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys(str(K))
    picker = f"#candidates button[data-user='{CUSTOMER}']"
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, picker), "customer buttons")
    browser.find_element(By.CSS_SELECTOR, picker).click()
    wait(
        browser,
        lambda d: loaded_pictures(d, "#recommendations .card > img") == K,
        f"{K} recommendation pictures loaded",
    )
    # Every work was uploaded as a picture, so each card shows its own stored one.
    for card, source in zip(
        browser.find_elements(By.CSS_SELECTOR, "#recommendations .card"),
        picture_sources(browser, "#recommendations .card > img"),
        strict=True,
    ):
        assert source == f"{service.url}/items/{card.get_attribute('data-item-id')}/image"
    assert f"user={CUSTOMER}" in browser.current_url
    assert f"k={K}" in browser.current_url
    wait(browser, lambda d: loaded_pictures(d, "#purchases img") == 3, "3 purchases shown")
    cards = browser.find_elements(By.CSS_SELECTOR, "#recommendations .card")
    assert "score" in cards[0].text
    assert "artist artist-" in cards[0].text
    assert "Study" in cards[0].text
    assert cards[0].find_elements(By.CSS_SELECTOR, ".because img"), "explained by purchases"
    assert browser.find_element(By.ID, "strategy").text == "(from 3 purchases)"

    # Similar works of the one clicked.
    clicked = cards[0].get_attribute("data-item-id")
    cards[0].click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#similar .card"), "similar works")
    similar = browser.find_elements(By.CSS_SELECTOR, "#similar .card")
    assert clicked not in [card.get_attribute("data-item-id") for card in similar]

    # Upload a painting in artist-0's look: it is stored, shown and ranked for the customer.
    upload = tmp_path / "new.jpg"
    upload.write_bytes(jpeg(paint(STYLES[0], "new-work")))
    browser.find_element(By.ID, "file").send_keys(str(upload))
    browser.find_element(By.ID, "upload-id").send_keys("new-work")
    browser.find_element(By.ID, "upload-artist").send_keys("artist-0")
    browser.find_element(By.ID, "upload-title").send_keys("Fresh paint")
    browser.find_element(By.CSS_SELECTOR, "#upload button").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#uploaded .card"), "upload shown")
    wait(browser, lambda d: loaded_pictures(d, "#uploaded .card img") >= 1, "upload's picture")
    assert (
        picture_sources(browser, "#uploaded .card img")[0] == f"{service.url}/items/new-work/image"
    )
    uploaded = browser.find_element(By.ID, "uploaded").text
    assert "Fresh paint" in uploaded
    assert "It now appears at rank " in uploaded
    assert f"for customer {CUSTOMER}" in uploaded
    assert service.client.get("/items/new-work").status_code == 200

    # A refused upload is shown to the person, not swallowed.
    gif = tmp_path / "not-a-painting.gif"
    Image.new("RGB", (32, 32)).save(gif, "GIF")
    browser.find_element(By.ID, "file").send_keys(str(gif))
    browser.find_element(By.CSS_SELECTOR, "#upload button").click()
    wait(browser, lambda d: "415" in d.find_element(By.ID, "errors").text, "the 415 shown")

    # A customer without purchases gets the fallback, labelled as such.
    browser.get(f"{service.url}/ui/?user=newcomer&k={K}")
    wait(browser, lambda d: "fallback" in d.find_element(By.ID, "strategy").text, "fallback")

    urls = requested_urls(browser)
    assert f"{service.url}/recommend" in urls, "the network log holds the page's requests"
    others = [u for u in urls if not u.startswith((service.url, "data:"))]
    assert others == [], "the page asked another origin"
    violations = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]
    assert violations == []


def test_with_a_key_the_page_asks_for_it_and_keeps_it_in_the_session(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    key = "storefront-key"
    live = LiveService(f"sqlite:///{tmp_path / 'store.db'}", CURATORNET_API_KEY=key)
    try:
        keyed = {"X-API-Key": key}
        assert live.client.post("/items", json=random_item("a"), headers=keyed).status_code == 200
        sale = {"user_id": "buyer", "item_ids": ["a"]}
        assert live.client.post("/purchases", json=sale, headers=keyed).status_code == 201
        browser.get(f"{live.url}/ui/?user=buyer")
        wait(browser, lambda d: "401" in d.find_element(By.ID, "errors").text, "a 401 shown")
        assert "API key" in browser.find_element(By.ID, "candidates").text
        browser.find_element(By.ID, "api-key").send_keys(key, Keys.TAB)
        picker = "#candidates button[data-user='buyer']"
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, picker), "customers listed")
        browser.find_element(By.CSS_SELECTOR, picker).click()
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#purchases img"), "history")
        stored = browser.execute_script("return sessionStorage.getItem('curatornet-api-key')")
        assert stored == key
        assert browser.execute_script("return localStorage.length") == 0
        assert key not in browser.current_url
    finally:
        browser.execute_script("sessionStorage.clear()")
        live.stop()
