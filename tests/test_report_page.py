"""report.html in a real headless Chromium: every section present, every image and chart drawn; the page of an
interrupted run says what is missing; `dlforge report RUN` rebuilds it, and refuses what is not a run.

Uses Debian's `chromium` via playwright (as tests/serve/test_serve_browser.py). Set DLFORGE_REPORT_SCREENSHOT to a
path to keep a full-page screenshot of the complete run's report.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dlforge
from dlforge.core.errors import TrainingInterrupted
from dlforge.report.html import SECTIONS

from conftest import main_ok

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# A 2x2 red PNG: stands in for what `dlforge explain` writes into explanations/.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000002000000020802000000fdd49a73000000164944415478da63f8cfc0"
                    "f09f81e13f03c37f0600206e05fbad0df8a50000000049454e44ae426082")


def data_csv(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 300
    group = rng.choice(["a", "b"], size=n)
    x = rng.normal(size=n) + (group == "b") * 0.5
    frame = pd.DataFrame({"x": x, "z": rng.normal(size=n), "group": group,
                          "y": np.where(x + rng.normal(scale=0.7, size=n) > 0.3, "yes", "no")})
    path = folder / "d.csv"
    frame.to_csv(path, index=False)
    return path


def recipe(csv: Path, epochs: int = 12) -> dict:
    return {"name": "page", "data": {"source": str(csv), "split": {"val": 0.2, "test": 0.3, "seed": 0}},
            "inputs": [{"name": "x", "type": "number"}, {"name": "z", "type": "number"},
                       {"name": "group", "type": "category"}],
            "outputs": [{"name": "y", "type": "binary"}],
            "training": {"epochs": epochs, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01},
                         "baseline": False},
            "evaluation": {"sensitive": ["group"], "mitigate": "threshold_optimizer", "calibrate": "temperature",
                           "mistakes": 5}}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def open_page(browser, path: Path):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, requests


def image_states(page) -> dict:
    return page.evaluate("""() => ({
        imgs: [...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0, alt: i.alt})),
        svgs: [...document.querySelectorAll('figure svg')].map(s => {
            const r = s.getBoundingClientRect(); return r.width > 50 && r.height > 50; }),
        sections: [...document.querySelectorAll('section')].map(s => s.id),
    })""")


@pytest.mark.slow  # a training run and a browser: seconds
def test_complete_run_report_in_chromium(browser, tmp_path):
    run = dlforge.train(recipe(data_csv(tmp_path)), out=tmp_path / "run", progress=False).run_dir
    (run / "explanations").mkdir()
    (run / "explanations" / "row_0.png").write_bytes(PNG)
    (run / "explanations" / "explanation.json").write_text(json.dumps({"method": "integrated_gradients",
                                                                       "warnings": ["a warning"]}))
    (run / "audit.json").write_text(json.dumps({"summary": ["2 exact duplicate rows"], "leaky_columns": [],
                                                "rows": 300}))
    assert main_ok(["report", str(run)])  # rebuilt with the audit and explanations now present
    page, requests = open_page(browser, run / "report.html")
    state = image_states(page)
    assert state["sections"] == [anchor for anchor, _ in SECTIONS]  # every section, in order
    assert state["imgs"] and all(i["ok"] for i in state["imgs"])  # the explanation PNG decoded
    # charts: loss, metrics, confusion, reliability, each drawn at a real size
    assert len(state["svgs"]) >= 4 and all(state["svgs"])
    assert all(url.startswith(("file:", "data:")) for url in requests)  # self-contained: nothing fetched
    text = {anchor: page.inner_text(f"#{anchor}") for anchor, _ in SECTIONS}
    assert "2 exact duplicate rows" in text["audit"]
    assert "demographic parity difference" in text["fairness"] and "selection_rate after" in text["fairness"]
    assert "temperature-scaled" in text["calibration"] and "ECE" in text["calibration"]
    assert "integrated_gradients" in text["mistakes"] and "confidence" in text["mistakes"]
    assert "nothing: the run directory is complete" in text["missing"]
    assert "not applicable" in text["regression"]
    assert "yes (positive)" in text["per-class"] and "recall" in text["per-class"]
    shot = os.environ.get("DLFORGE_REPORT_SCREENSHOT")
    if shot:
        page.screenshot(path=shot, full_page=True)
    page.close()


class StopAfterFirstEpoch:
    def __init__(self, stop):
        self.stop = stop

    def on_epoch_end(self, trainer, epoch, metrics):
        self.stop.set()
        return False


@pytest.mark.slow  # a training run and a browser: seconds
def test_interrupted_run_report_says_what_is_missing(browser, tmp_path):
    stop = threading.Event()
    with pytest.raises(TrainingInterrupted):
        dlforge.train(recipe(data_csv(tmp_path), epochs=5), out=tmp_path / "run", progress=False, stop=stop,
                      callbacks=[StopAfterFirstEpoch(stop)])
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists()
    from dlforge.workflows.runs import report

    path = report(run)
    page, _ = open_page(browser, path)
    state = image_states(page)
    assert state["sections"] == [anchor for anchor, _ in SECTIONS]
    assert all(state["svgs"]) and len(state["svgs"]) >= 1  # the curves the checkpoint kept
    text = page.inner_text("body")
    assert "incomplete" in text
    assert "missing: metrics.json" in text
    assert f"dlforge train --resume {run}" in text
    assert "metrics.json" in page.inner_text("#missing") and "model.json" in page.inner_text("#missing")
    page.close()


def test_report_of_an_empty_run_directory_lists_what_is_missing(tmp_path):
    from dlforge.report.html import build_report

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text("name: half\n")
    page = build_report(tmp_path / "run")
    for anchor, _ in SECTIONS:
        assert f"<section id='{anchor}'>" in page
    assert "files not in the run directory: metrics.json, history.csv, model.json, model.safetensors" in page


def test_report_command_refuses_what_is_not_a_run(tmp_path, capsys):
    from dlforge.cli import main

    (tmp_path / "notes").mkdir()
    for target, message in ((tmp_path / "absent", "no such run directory"),
                            (tmp_path / "notes", "is not a dlforge run directory")):
        with pytest.raises(SystemExit) as done:
            main(["report", str(target)])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
