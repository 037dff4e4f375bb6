"""Serving per-residue runs: the JSON answer is what the Predictor returns, the OpenAPI document
describes it, and the page draws the sequence coloured by class (or on a value scale) with each
residue's probabilities or value on hover."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.test_residue_tasks import MAX_LENGTH, _train, write_flip

from esmtune.predict import Predictor, check_loadable

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from esmtune.serve import create_app

COUNTS = {"train": 32, "validation": 8, "test": 8}
SHORT = "MKVLLDEKRAVLS"
LONG = "ADEKLRSVGN" * 7  # 70 residues: windows of MAX_LENGTH (32), stitched residue by residue


@pytest.fixture(scope="module")
def residue_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A residue_classification run (mlp head) and a residue_regression run (cnn head)."""
    root = tmp_path_factory.mktemp("residue_serve")
    classes = write_flip(root / "classes", COUNTS, regression=False)
    values = write_flip(root / "values", COUNTS, regression=True)
    return {
        "residue_classification": _train(
            tiny_model_dir, classes, root / "runs", "classes", "task=residue_classification",
            "training.epochs=2",
        ),
        "residue_regression": _train(
            tiny_model_dir, values, root / "runs", "values", "task=residue_regression",
            "model.head=cnn", "model.head_kernel_size=3", "training.epochs=2",
        ),
    }  # fmt: skip


@pytest.mark.parametrize("task", ["residue_classification", "residue_regression"])
def test_served_json_is_the_predictors_answer_and_the_schema_describes_it(
    residue_runs: dict, task: str
) -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")  # schemathesis's validator
    run = residue_runs[task]
    check_loadable(run)  # what `serve --workers N` checks first: no refusal
    expected = Predictor.from_run(run, device="cpu").predict({"P1": SHORT, "P2": LONG})
    with TestClient(create_app(run, device="cpu", batch_wait_ms=0)) as client:
        body = {"sequences": [{"id": "P1", "sequence": SHORT}, {"id": "P2", "sequence": LONG}]}
        answer = client.post("/predict", json=body)
        assert answer.status_code == 200, answer.text
        fasta = client.post("/predict", content=f">P1\n{SHORT}\n", headers={
            "content-type": "text/plain"})  # fmt: skip
        openapi = client.get("/openapi.json").json()
        info = client.get("/info").json()
    answer_json = answer.json()
    assert answer_json["predictions"] == expected
    # Alone in its model call, the short chain is padded less: the same within float noise.
    assert fasta.json()["predictions"] == [_approx(expected[0])]
    assert answer_json["warnings"] == [
        f"record 'P2': {len(LONG)} residues, longer than the model's {MAX_LENGTH}; read in "
        "overlapping windows stitched residue by residue"
    ]
    assert info["display"]["residues"]["letters"] == "sequence"
    schema = openapi["paths"]["/predict"]["post"]["responses"]["200"]["content"]
    schema = schema["application/json"]["schema"]
    assert jsonschema_rs.is_valid(schema, answer_json)
    item = schema["properties"]["predictions"]["items"]["allOf"][1]
    field = "probabilities" if task == "residue_classification" else "values"
    assert field in item["required"]
    broken = {**answer_json["predictions"][0]}
    del broken[field]
    assert not jsonschema_rs.is_valid(schema, {**answer_json, "predictions": [broken]})
    first = answer_json["predictions"][0]
    assert len(first[field]) == len(SHORT) == len(first["sequence"])


def _approx(prediction: dict) -> dict:
    """``prediction`` with its numbers compared to 1e-5."""
    numbers = ("values", "probabilities")
    return {
        key: [None if v is None else pytest.approx(v, abs=1e-5) for v in value]
        if key in numbers
        else value
        for key, value in prediction.items()
    }


# --- the page, in headless Chromium against a real server ---------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Each drawn residue: its letter, position, colour and tooltip; and the legend's entries.
_READ_RESIDUES = """() => [...document.querySelectorAll("#out .card")].map((card) => ({
  residues: [...card.querySelectorAll(".seq .res")].map((span) => ({
    letter: span.textContent, position: Number(span.dataset.position),
    colour: getComputedStyle(span).backgroundColor, title: span.title,
  })),
  legend: [...card.querySelectorAll(".legend > span")].map((entry) => ({
    text: entry.textContent,
    colour: entry.querySelector(".swatch") &&
      getComputedStyle(entry.querySelector(".swatch")).backgroundColor,
  })),
}))"""


@pytest.fixture
def served_page(residue_runs: dict, request: pytest.FixtureRequest) -> Iterator:
    """A Chromium tab on `esmtune serve` over the run of the test's task."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not installed: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.helpers import serve_process, wait_until_healthy
    from tests.test_serve_page import _CHROMIUM_FLAGS

    with (
        serve_process(residue_runs[request.param]) as (process, base),
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=_CHROMIUM_FLAGS)
        wait_until_healthy(process, base)
        tab = browser.new_page(base_url=base)
        tab.set_default_timeout(15_000)
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        yield tab
        browser.close()
        assert not errors, f"the page's script failed: {errors}"


def _draw(page, sequence: str) -> dict:
    page.goto("/")
    page.fill("#input", f">P1\n{sequence}\n")
    with page.expect_response("**/predict"):
        page.click("#go")
    page.wait_for_selector("#out .card .seq")
    (card,) = page.evaluate(_READ_RESIDUES)
    return card


@pytest.mark.browser
@pytest.mark.end_to_end
@pytest.mark.parametrize("served_page", ["residue_classification"], indirect=True)
def test_page_colours_residues_by_class_with_probabilities_on_hover(
    served_page, residue_runs: dict
) -> None:
    (expected,) = Predictor.from_run(residue_runs["residue_classification"], device="cpu").predict(
        [LONG]
    )
    card = _draw(served_page, LONG)
    legend = {entry["text"]: entry["colour"] for entry in card["legend"]}
    assert set(legend) == set(expected["classes"]) and len(set(legend.values())) == len(legend)
    assert [r["letter"] for r in card["residues"]] == list(LONG)
    assert [r["position"] for r in card["residues"]] == list(range(1, len(LONG) + 1))
    for residue, chosen, probabilities in zip(
        card["residues"], expected["prediction"], expected["probabilities"], strict=True
    ):
        assert residue["colour"] == legend[chosen]
        lines = residue["title"].split("\n")
        assert lines[0] == f"{residue['position']} {residue['letter']}: {chosen}"
        assert lines[1:] == [
            f"{name} {p:.3f}" for name, p in zip(expected["classes"], probabilities, strict=True)
        ]


@pytest.mark.browser
@pytest.mark.end_to_end
@pytest.mark.parametrize("served_page", ["residue_regression"], indirect=True)
def test_page_draws_residue_values_on_a_colour_scale(served_page, residue_runs: dict) -> None:
    (expected,) = Predictor.from_run(residue_runs["residue_regression"], device="cpu").predict(
        [SHORT]
    )
    card = _draw(served_page, SHORT)
    values = expected["values"]
    low, high = min(values), max(values)
    shown_low, scale, shown_high = card["legend"]
    assert float(shown_low["text"]) == pytest.approx(low, rel=1e-2) and scale["text"] == ""
    assert float(shown_high["text"]) == pytest.approx(high, rel=1e-2)
    residues = card["residues"]
    assert [r["letter"] for r in residues] == list(SHORT)
    for i, (residue, value) in enumerate(zip(residues, values, strict=True), start=1):
        where, shown = residue["title"].split(": ")
        assert where == f"{i} {SHORT[i - 1]}"
        assert float(shown) == pytest.approx(value, rel=1e-3)
    # The lowest value is blue, the highest red.
    assert residues[values.index(low)]["colour"] == "rgb(47, 91, 211)"
    assert residues[values.index(high)]["colour"] == "rgb(179, 38, 30)"
