"""The web page in a real headless Chromium: load it, drop in an image / fill a form, read the prediction.

Uses Debian's `chromium` (`.ci/run` installs it) driven by playwright for Python; it is skipped, with
the reason, only where no Chromium binary exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from .conftest import live_server, png_bytes

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium; .ci/run does)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def test_image_model_page(browser, digits_run, digits_predictor, tmp_path):
    image = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    (tmp_path / "digit.png").write_bytes(png_bytes(image))
    expected = digits_predictor.predict(image[None])[0]
    with live_server(digits_run, digits_predictor) as url:
        page = browser.new_page()
        errors = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(url + "/")
        page.wait_for_selector("#predict-form:not([hidden])")
        assert page.text_content("#model-name") == "tiny-digits"
        page.set_input_files("#in-image", str(tmp_path / "digit.png"))
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden])")
        assert page.text_content("#prediction") == expected
        bars = page.locator(".bar")
        assert bars.count() == 5  # default top-k
        assert bars.first.get_attribute("data-label") == expected
        assert "round trip" in page.text_content("#latency") and "ms" in page.text_content("#latency")
        page.screenshot(path=str(tmp_path / "serve-page-digits.png"), full_page=True)
        assert (tmp_path / "serve-page-digits.png").stat().st_size > 1000
        assert errors == []  # no CSP violation, no script error


def test_tabular_page_with_api_key(browser, tabular_run, tabular_predictor, tmp_path):
    key = "browser-key-" + "b" * 24
    (tmp_path / "api.key").write_text(key)
    (tmp_path / "api.key").chmod(0o600)
    record = {"age": 61.0, "hours-per-week": 70.0, "workclass": "Self-emp", "sex": "Male"}
    expected = tabular_predictor.predict({k: [v] for k, v in record.items()})[0]
    with live_server(tabular_run, tabular_predictor, api_key_file=str(tmp_path / "api.key")) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#key-section:not([hidden])")
        page.fill("#api-key", key)
        page.click("#key-save")
        page.wait_for_selector("#predict-form:not([hidden])")
        page.fill("#in-age", "61")
        page.fill("[id='in-hours-per-week']", "70")
        page.fill("#in-workclass", "Self-emp")
        page.select_option("#in-sex", "Male")
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden])")
        assert page.text_content("#prediction") == expected
        assert page.locator(".bar").count() == 2
        page.screenshot(path=str(tmp_path / "serve-page-tabular.png"), full_page=True)
