"""The page of `esmtune serve` at /, driven in headless Chromium against a real server.

What a person sees is checked against what the Predictor computes: one card per sequence, the
labels and probabilities as printed, bar widths as rendered, errors naming the bad record.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# Chromium against `esmtune serve` started as a process.
pytestmark = [pytest.mark.browser, pytest.mark.end_to_end]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(
        "Chromium not installed: apt-get install chromium (CI installs it in .ci/run)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright not installed: pip install -e '.[dev]'"
)
httpx = pytest.importorskip("httpx")

from tests.helpers import ACID, BASE, LONG, OILY, serve_process, wait_until_healthy  # noqa: E402
from tests.helpers import LORA_RUN_MAX_LENGTH as MAX_LENGTH  # noqa: E402

from esmtune.tasks import task_from_state  # noqa: E402

# Headless Chromium as root in a container: no sandbox, no GPU, no calls home.
_CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Everything the tests read from the cards, in one round trip.
_READ_CARDS = """() => [...document.querySelectorAll("#out .card")].map((card) => ({
  id: card.querySelector("h3").firstChild.textContent.trim(),
  meta: card.querySelector("h3 .meta").textContent,
  text: card.innerText,
  rows: [...card.querySelectorAll(".row")].map((row) => ({
    name: row.querySelector(".name").textContent,
    number: row.querySelector(".num").textContent,
    bar: row.querySelector(".bar").getBoundingClientRect().width,
    fill: row.querySelector(".bar span").getBoundingClientRect().width,
  })),
}))"""


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=_CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server_process(lora_run: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`esmtune serve` starting on a free loopback port, and its base URL."""
    with serve_process(lora_run) as started:
        yield started


@pytest.fixture(scope="module")
def server(server_process: tuple[subprocess.Popen, str], browser: sync_api.Browser) -> str:
    """The server's base URL once it answers /health (Chromium starts while it loads)."""
    wait_until_healthy(*server_process)
    return server_process[1]


@pytest.fixture
def page(server: str, browser: sync_api.Browser) -> Iterator[sync_api.Page]:
    """A fresh tab on the server; fails the test if the page's script raised or logged errors."""
    context = browser.new_context(viewport={"width": 1000, "height": 800}, base_url=server)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    # HTTP errors are logged as "Failed to load resource": a 422 is an expected answer here, and
    # the browser's own /favicon.ico request gets a 404; the script's own errors are what count.
    tab.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    yield tab
    context.close()
    assert not errors, f"the page's script failed: {errors}"


def _submit(page: sync_api.Page, text: str) -> None:
    """Paste ``text``, press Predict, and wait until the answer is on the page."""
    page.fill("#input", text)
    with page.expect_response("**/predict"):
        page.click("#go")
    sync_api.expect(page.locator("#go")).to_be_enabled()  # re-enabled once the answer is drawn


def test_page_shows_the_model(page: sync_api.Page, server: str) -> None:
    info = httpx.get(f"{server}/info").json()
    page.goto("/")
    sync_api.expect(page.locator("#info")).not_to_contain_text("loading")
    shown = page.text_content("#info")
    assert shown.startswith(f"multiclass model on {info['base_model']}")
    assert f"{len(info['labels'])} labels" in shown
    metrics = info["metrics"]
    score = f"best {metrics['selection_metric']} {metrics['best_value']:.3f}"
    assert f"{score} (epoch {metrics['best_epoch']})" in shown


def test_predictions_are_drawn_as_the_predictor_computes_them(
    page: sync_api.Page,
    lora_predictor,
    tmp_path: Path,
) -> None:
    # Wrapped lines, lowercase and a stop '*', as people paste them; 'big' needs four windows.
    fasta = f">P1 acidic\n{ACID[:10]}\n{ACID[10:]}\n>P2\n{BASE.lower()}*\n>big\n{LONG}\n"
    expected = lora_predictor.predict({"P1": ACID, "P2": BASE, "big": LONG})
    page.goto("/")
    _submit(page, fasta)
    sync_api.expect(page.locator("#out .card")).to_have_count(3)
    cards = page.evaluate(_READ_CARDS)

    assert [card["id"] for card in cards] == ["P1", "P2", "big"]
    for card, want in zip(cards, expected, strict=True):
        assert card["meta"].startswith(f"{want['length']} residues")
        assert [row["name"] for row in card["rows"]] == [label for label, _ in want["top_k"]]
        assert card["rows"][0]["name"] == want["label"]  # the top bar is the prediction
        assert f"label: {want['label']} ({want['probability']:.3f})" in card["text"]
        for row, (_, probability) in zip(card["rows"], want["top_k"], strict=True):
            assert float(row["number"]) == pytest.approx(probability, abs=6e-4)
            assert row["fill"] / row["bar"] == pytest.approx(probability, abs=0.01)
    assert cards[2]["meta"] == f"{len(LONG)} residues, {expected[2]['windows']} windows"
    assert expected[2]["windows"] > 1 and "windows" not in cards[0]["meta"]

    (warning,) = page.locator("#out .warn").all_text_contents()
    assert "'big'" in warning and str(MAX_LENGTH) in warning

    shot = Path(os.environ.get("ESMTUNE_SCREENSHOT_DIR", tmp_path)) / "predictions.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.stat().st_size > 10_000


def test_invalid_sequence_shows_the_error_naming_the_record(page: sync_api.Page) -> None:
    page.goto("/")
    _submit(page, f">good\n{OILY}\n")
    sync_api.expect(page.locator("#out .card")).to_have_count(1)

    _submit(page, f">good\n{OILY}\n>bad1\nMKVJ1R\n")
    error = page.locator("#out .error")
    sync_api.expect(error).to_have_count(1)
    message = error.text_content()
    assert "1 invalid sequence(s)" in message
    assert "'bad1'" in message and "'J'" in message and "position 4" in message
    assert "'good'" not in message
    assert page.locator("#out .card").count() == 0  # the earlier answer is gone


def test_plain_lines_get_numbered_ids(page: sync_api.Page) -> None:
    page.goto("/")
    _submit(page, f"{ACID}\n\n{OILY}\n")
    sync_api.expect(page.locator("#out .card h3")).to_have_count(2)
    titles = page.locator("#out .card h3").all_text_contents()
    assert [title.split()[0] for title in titles] == ["seq1", "seq2"]


# The other tasks' answers, made by their own TaskSpec.predictions, replace /predict's and
# /info's in the browser, so every branch of the page's drawing code runs on the real formats.
_OTHER_TASKS = {
    "binary": ({"labels": ["soluble", "membrane"], "thresholds": [0.3]}, [[0.42]]),
    "multilabel": (
        {
            "labels": ["GO:1", "GO:2", "GO:3"],
            "label_names": {"GO:1": "kinase", "GO:3": "nucleus"},
            "thresholds": [0.5, 0.5, 0.2],
        },
        [[0.91, 0.05, 0.25]],
    ),
    "regression": ({"labels": ["stability", "activity"]}, [[1.23456, -0.5]]),
}


@pytest.mark.parametrize("task", sorted(_OTHER_TASKS))
def test_other_tasks_are_drawn(page: sync_api.Page, task: str) -> None:
    import numpy as np

    state, outputs = _OTHER_TASKS[task]
    spec = task_from_state({"task": task, **state})
    rows = np.asarray(outputs, dtype=np.float32)
    (prediction,) = spec.predictions(rows[:, 0] if task == "binary" else rows, None)
    answer = {"task": task, "predictions": [{"id": "Q1", **prediction, "length": 9, "windows": 1}]}
    info = {"task": task, "base_model": "tiny", "labels": spec.labels, "metrics": {}}
    info["label_names"] = spec.label_names
    info["display"] = spec.display()  # the task's own description of how to draw it
    page.route("**/info", lambda route: route.fulfill(json=info))
    page.route("**/predict", lambda route: route.fulfill(json=answer))
    page.goto("/")
    sync_api.expect(page.locator("#info")).to_have_text(
        f"{task} model on tiny · {len(spec.labels)} "
        + ("target(s)" if task == "regression" else "labels")
    )
    _submit(page, ">Q1\nMKVLAAGIV\n")
    (card,) = page.evaluate(_READ_CARDS)
    assert card["id"] == "Q1"
    if task == "binary":
        assert "label: membrane (threshold 0.300)" in card["text"]
        assert [(r["name"], r["number"]) for r in card["rows"]] == [
            ("soluble", "0.580"),
            ("membrane", "0.420"),
        ]
    elif task == "multilabel":
        assert "labels: GO:1, GO:3" in card["text"]
        assert [r["name"] for r in card["rows"]] == ["kinase (GO:1)", "nucleus (GO:3)", "GO:2"]
    else:
        assert "stability: 1.235" in card["text"] and "activity: -0.5000" in card["text"]
        assert card["rows"] == []
    for row in card["rows"]:
        assert row["fill"] / row["bar"] == pytest.approx(float(row["number"]), abs=0.01)


def test_an_answer_that_is_not_json_shows_its_status(page: sync_api.Page) -> None:
    page.route(
        "**/predict",
        lambda route: route.fulfill(
            status=500, body="Internal Server Error", content_type="text/plain"
        ),
    )
    page.goto("/")
    _submit(page, ">Q1\nMKVLAAGIV\n")
    message = page.locator("#out .error").text_content()
    assert "500" in message and "SyntaxError" not in message


def test_unavailable_model_information_is_said(page: sync_api.Page) -> None:
    page.route(
        "**/info",
        lambda route: route.fulfill(status=502, body="<html>Bad Gateway</html>",
                                    content_type="text/html"),
    )  # fmt: skip
    page.goto("/")
    info = page.locator("#info .error")
    sync_api.expect(info).to_contain_text("model information unavailable: 502")


def test_label_names_are_listed(page: sync_api.Page, server: str) -> None:
    labels = httpx.get(f"{server}/info").json()["labels"]
    page.goto("/")
    sync_api.expect(page.locator("#labels")).to_have_text("labels: " + ", ".join(labels))
