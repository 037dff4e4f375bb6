"""The evaluation's report.html: self-contained, escaped, and showing metrics.json's numbers.

The page is rendered from a hand-made evaluation folder (so every section is present), read as
text, and opened in headless Chromium: no script error, no request leaves the page, every
figure decodes, and the cards show the numbers of metrics.json.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from esmtune.plots import plot_confusion_matrix
from esmtune.report_page import write_report

HOSTILE = "<script>alert('id')</script>"


def _evaluation(tmp_path: Path) -> tuple[Path, Path, dict]:
    run = tmp_path / "run"
    out = run / "eval" / "test"
    out.mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump({"task": "multiclass", "model": {"name": "tiny", "pooling": "mean"}})
    )
    (run / "metrics.json").write_text(json.dumps(
        {"selection_metric": "macro_f1", "best_value": 0.81, "best_epoch": 3, "epochs_run": 5}
    ))  # fmt: skip
    (run / "data_check.txt").write_text(f"train 100 sequences\nduplicate id {HOSTILE}\n")
    plot_confusion_matrix([[5, 1], [2, 7]], ["A", HOSTILE], out / "confusion_matrix.png", "t")
    metrics = {
        "task": "multiclass", "split": "test", "data": "examples/x", "n": 15,
        "accuracy": 0.8, "macro_f1": 0.7833, "mcc": 0.5871,
        "per_class": {"A": {"precision": 0.71, "recall": 0.83, "f1": 0.77, "support": 6},
                      HOSTILE: {"precision": 0.88, "recall": 0.78, "f1": 0.82, "support": 9}},
        "intervals": {"level": 0.95, "resamples": 1000, "seed": 0, "proteins": 15,
                      "metrics": {"accuracy": {"low": 0.6, "high": 0.93, "undefined": 0},
                                  "macro_f1": {"low": 0.55, "high": 0.92, "undefined": 0},
                                  "mcc": {"low": 0.2, "high": 0.86, "undefined": 0}}},
        "baseline": {"name": "composition", "metrics": {"accuracy": 0.6, "macro_f1": 0.58,
                                                         "mcc": 0.21},
                     "intervals": {"accuracy": {"low": 0.4, "high": 0.8}},
                     "difference": {"accuracy": {"value": 0.2, "low": 0.05, "high": 0.4,
                                                 "verdict": "better"}}},
        "calibration": {"method": "temperature", "fitted": {"temperature": 1.7},
                        "before": {"ece": 0.142, "n": 15, "bins": []},
                        "after": {"ece": 0.051, "n": 15, "bins": []}},
        "by_identity": {"columns": ["identity", "n", "accuracy"],
                        "rows": [["≥95%", 4, 1.0], ["<30%", 11, 0.7273]]},
    }  # fmt: skip
    return run, out, metrics


def test_the_report_holds_every_section_escaped(tmp_path: Path) -> None:
    run, out, metrics = _evaluation(tmp_path)
    page = write_report(out, run, metrics, ("accuracy", "macro_f1", "mcc")).read_text()
    assert HOSTILE not in page  # ids and labels from user files are escaped ...
    assert "&lt;script&gt;alert(&#39;id&#39;)&lt;/script&gt;" in page  # ... and still shown
    assert "0.783" in page and "[0.550, 0.920]" in page  # macro-F1 and its interval
    assert "composition: 0.600" in page and "+0.200" in page and "better" in page
    assert "0.142 before" in page and "0.051 after" in page
    assert "≥95%" in page and "0.727" in page
    assert "macro_f1 0.810 at epoch 3 of 5" in page
    assert re.search(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)
    assert "http://" not in page and "https://" not in page  # nothing is fetched
    embedded = re.search(r'<script type="application/json" id="metrics-json">(.*?)</script>', page)
    assert embedded and json.loads(embedded.group(1)) == metrics


def test_a_report_without_the_optional_sections(tmp_path: Path) -> None:
    run, out, metrics = _evaluation(tmp_path)
    for key in ("intervals", "baseline", "calibration", "by_identity", "per_class"):
        del metrics[key]
    (run / "data_check.txt").unlink()
    page = write_report(out, run, metrics, ("accuracy",)).read_text()
    assert "0.800" in page and "Calibration" not in page and "Data check" not in page


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.browser
@pytest.mark.end_to_end
def test_the_report_renders_in_chromium(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not installed: apt-get install chromium (CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    run, out, metrics = _evaluation(tmp_path)
    page_path = write_report(out, run, metrics, ("accuracy", "macro_f1", "mcc"))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        errors: list[str] = []
        requests: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_path.as_uri())
        cards = page.eval_on_selector_all(
            "#headline .card", "cards => cards.map(c => [c.dataset.metric, c.innerText])"
        )
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        browser.close()
    assert not errors, errors
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    shown = dict(cards)
    assert "0.783" in shown["macro_f1"] and "[0.550, 0.920]" in shown["macro_f1"]
    assert f"{metrics['accuracy']:.3f}" in shown["accuracy"] and "better" in shown["accuracy"]
    assert images and all(width > 100 for width in images)
