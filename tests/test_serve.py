"""`esmtune serve`: the HTTP API over a trained run, in-process and as a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.helpers import ACID, BASE, LONG, OILY, serve_process, wait_until_healthy
from tests.helpers import LORA_RUN_MAX_LENGTH as MAX_LENGTH

from esmtune.cli import main

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from esmtune.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(lora_run: Path):
    app = create_app(
        lora_run, max_sequences=5, max_request_residues=600, batch_wait_ms=5, device="cpu"
    )
    with TestClient(app) as test_client:  # `with` runs the lifespan: the batching worker
        yield test_client


def _same(served: list[dict], expected: list[dict]) -> None:
    assert [r["id"] for r in served] == [r["id"] for r in expected]
    for got, want in zip(served, expected, strict=True):
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert [label for label, _ in got["top_k"]] == [label for label, _ in want["top_k"]]
        assert got["length"] == want["length"] and got["windows"] == want["windows"]


def test_json_and_fasta_give_the_predictors_answers(client, lora_predictor) -> None:
    expected = lora_predictor.predict({"P1": ACID, "P2": BASE, "seq3": OILY}, top_k=2)
    body = {
        "sequences": [{"id": "P1", "sequence": ACID}, {"id": "P2", "sequence": BASE}, OILY],
        "top_k": 2,
    }
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["task"] == "multiclass" and "warnings" not in answer.json()
    _same(answer.json()["predictions"], expected)
    assert all(len(r["top_k"]) == 2 for r in answer.json()["predictions"])

    fasta = f">P1 acidic\n{ACID[:10]}\n{ACID[10:]}\n>P2\n{BASE.lower()}*\n>seq3\n{OILY}\n"
    for content_type in ("text/plain", "text/x-fasta"):
        answer = client.post(
            "/predict?top_k=2", content=fasta, headers={"Content-Type": content_type}
        )
        assert answer.status_code == 200, answer.text
        _same(answer.json()["predictions"], expected)


def test_plain_lines_and_default_ids_and_top_k(client, lora_predictor) -> None:
    answer = client.post(
        "/predict", content=f"{ACID}\n\n{BASE}\n", headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["predictions"]
    _same(results, lora_predictor.predict([ACID, BASE]))
    assert [r["id"] for r in results] == ["seq1", "seq2"]
    assert len(results[0]["top_k"]) == 3  # multiclass default: every label ranked


def test_long_sequences_are_windowed_with_a_warning(client, lora_predictor) -> None:
    answer = client.post("/predict", json={"sequences": [{"id": "big", "sequence": LONG}]})
    assert answer.status_code == 200, answer.text
    (warning,) = answer.json()["warnings"]
    assert "'big'" in warning and "windows" in warning and str(MAX_LENGTH) in warning
    (result,) = answer.json()["predictions"]
    assert result["windows"] > 1
    _same([result], lora_predictor.predict({"big": LONG}))


def test_long_sequences_refused_when_asked(lora_run: Path) -> None:
    app = create_app(lora_run, long_sequences="refuse", device="cpu")
    with TestClient(app) as refusing:
        answer = refusing.post(
            "/predict", json={"sequences": [OILY, {"id": "big", "sequence": LONG}]}
        )
        assert answer.status_code == 413
        assert "'big'" in answer.json()["detail"] and str(len(LONG)) in answer.json()["detail"]
        assert refusing.post("/predict", json={"sequences": [OILY]}).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (
            {"sequences": [ACID, {"id": "bad", "sequence": "MKJKR"}]},
            422,
            ["record 'bad'", "'J'", "position 3"],
        ),
        ({"sequences": [{"id": "gap", "sequence": "MK-R"}]}, 422, ["'gap'", "'-'", "position 3"]),
        ({"sequences": []}, 422, ["no sequences"]),
        ({"sequences": [{"id": "void", "sequence": ""}]}, 422, ["'void'", "empty"]),
        ({"sequences": [ACID] * 6}, 413, ["6 sequences", "max_sequences", "is 5", "split"]),
        ({"sequences": [ACID * 30]}, 413, ["780 residues", "max_request_residues", "is 600"]),
        ({"sequences": [ACID], "top_k": 0}, 422, ["top_k"]),
        ({"sequences": [ACID], "top_k": "two"}, 422, ["top_k"]),
        ({"sequences": [42]}, 422, ["sequences[0]"]),
        ({"sequences": [{"id": "x"}]}, 422, ["sequences[0]", "sequence"]),
        ({"sequence": [ACID]}, 422, ["sequences"]),
        ({"sequences": "MKV"}, 422, ["list"]),
    ],
)
def test_bad_json_input_is_a_clear_4xx(client, body, status, words) -> None:
    answer = client.post("/predict", json=body)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    for word in words:
        assert word in detail


@pytest.mark.parametrize(
    ("content", "content_type", "status", "words"),
    [
        ('{"sequences": [', "application/json", 400, ["malformed JSON", "line 1"]),
        (b"\xff\xfe>", "text/plain", 400, ["UTF-8"]),
        (">\nMKV\n", "text/plain", 422, ["malformed FASTA", "line 1"]),
        ("MKV\n>P1\nMKV\n", "text/plain", 422, ["malformed FASTA", "before the first"]),
        (">P1\nMKV\n>P2\nMKBJ\n", "text/x-fasta", 422, ["line 3", "'P2'", "'J'", "position 4"]),
        ("", "text/plain", 422, ["no sequences"]),
        ("MKV", "image/png", 415, ["text/plain"]),
    ],
)
def test_bad_text_input_is_a_clear_4xx(client, content, content_type, status, words) -> None:
    answer = client.post("/predict", content=content, headers={"Content-Type": content_type})
    assert answer.status_code == status, answer.text
    for word in words:
        assert word in answer.json()["detail"]


def test_health_info_docs_and_page(client, lora_run: Path) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["task"] == "multiclass"
    assert info["labels"] == ["Acidic", "Basic", "Hydrophobic"]
    assert info["base_model"].startswith(str(lora_run.parents[1]))  # the tiny model folder
    assert info["metrics"]["selection_metric"] == "macro_f1"
    assert info["metrics"]["best_epoch"] in (1, 2)
    assert 0 <= info["metrics"]["best_value"] <= 1
    assert {"torch", "transformers"} <= set(info["versions"])
    assert info["limits"]["max_sequences"] == 5
    assert info["sequences_served"] >= info["batches_run"] >= 0
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<form" in page.text and "<textarea" in page.text and "predict" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no external CDN


def test_settings_are_checked(lora_run: Path) -> None:
    from esmtune.errors import EsmtuneError

    with pytest.raises(EsmtuneError, match="window"):
        create_app(lora_run, long_sequences="truncate")
    with pytest.raises(EsmtuneError, match="not a finished esmtune run"):
        create_app(lora_run / "nowhere")


def test_several_workers_report_a_bad_model_once(lora_run: Path, capsys) -> None:
    """Each worker would load the model itself; what stops them is said once, before any start."""
    assert main(["serve", str(lora_run / "nowhere"), "--workers", "2"]) == 2
    error = capsys.readouterr().err
    assert error.count("not a finished esmtune run") == 1
    assert main(["serve", str(lora_run), "--workers", "2", "--runtime", "onnx"]) == 2
    assert "export it first" in capsys.readouterr().err
    assert main(["serve", str(lora_run), "--workers", "2", "--max-sequences", "0"]) == 2
    assert "--max-sequences" in capsys.readouterr().err  # named, with what it must be


@pytest.mark.end_to_end
def test_real_server_batches_concurrent_requests(lora_run: Path, lora_predictor) -> None:
    with serve_process(lora_run, "--batch-wait-ms", "50") as (server, base):
        wait_until_healthy(server, base)
        pool = [ACID, BASE, OILY, ACID[:12], BASE[3:], OILY + OILY]
        requests = [
            {"sequences": [{"id": f"r{i}", "sequence": pool[i % len(pool)]}, pool[(i + 1) % 6]]}
            for i in range(24)
        ]

        async def send_all() -> list:
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                return await asyncio.gather(*(http.post("/predict", json=r) for r in requests))

        answers = asyncio.run(send_all())
        for request, answer in zip(requests, answers, strict=True):
            assert answer.status_code == 200, answer.text
            (first, second) = request["sequences"]
            expected = lora_predictor.predict({first["id"]: first["sequence"], "seq2": second})
            _same(answer.json()["predictions"], expected)
        info = httpx.get(f"{base}/info").json()
        assert info["sequences_served"] == 48
        assert 1 <= info["batches_run"] < len(requests)  # requests shared model calls
