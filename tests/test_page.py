"""The prediction page, in Debian's headless Chromium: the form, a prediction, field errors."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from winequality.schema import FEATURE_NAMES
from winequality.serving import create_app

from .conftest import ServerThread, tier_unavailable

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        tier_unavailable(
            "browser",
            "chromium or chromedriver is not on PATH",
            "install Debian's chromium and chromium-driver (apt-get install chromium "
            "chromium-driver)",
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1000,1200",
    ):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(driver))
    yield session
    session.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page_url(scorer) -> Iterator[str]:
    with ServerThread(create_app(scorer)) as url:
        yield url + "/"


def field(browser, name: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f'input[data-column="{name}"]')


def wait_text(browser, css: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    element = browser.find_element(By.CSS_SELECTOR, css)
    WebDriverWait(browser, 10).until(lambda _: element.text.strip())
    return element.text


def test_the_form_is_built_from_the_schema_and_prefilled(browser, page_url, scorer) -> None:
    browser.get(page_url)
    example = scorer.model.input_example.iloc[0]
    for name in FEATURE_NAMES:
        assert float(field(browser, name).get_attribute("value")) == pytest.approx(example[name])
    assert field(browser, "pH").get_attribute("data-max") == "14"


def test_predicting_shows_the_score(browser, page_url, scorer) -> None:
    from selenium.webdriver.common.by import By

    browser.get(page_url)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text = wait_text(browser, "#result")
    expected = scorer.predict(scorer.model.input_example.to_numpy())[0]
    assert text == f"quality ≈ {expected:.2f}"
    half = scorer.model.intervals.half_widths["0.9"]  # the range beside it, at 0.9
    low, high = expected - half, expected + half
    assert wait_text(browser, "#range") == f"90 % range {low:.2f} – {high:.2f}"


def test_errors_appear_next_to_the_offending_fields(browser, page_url) -> None:
    from selenium.webdriver.common.by import By

    browser.get(page_url)
    for name, value in (("pH", "15"), ("alcohol", "strong")):
        field(browser, name).clear()
        field(browser, name).send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    ph_error = wait_text(browser, '[data-error-for="pH"]')
    assert "outside the physical range [0, 14]" in ph_error
    assert "not a number" in wait_text(browser, '[data-error-for="alcohol"]')
    assert "invalid" in field(browser, "pH").get_attribute("class")
    assert not browser.find_element(By.CSS_SELECTOR, "#result").text
