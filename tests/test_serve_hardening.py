"""`esmtune serve` under hostile or oversized input: 4xx answers, never 500; limits that name
themselves; bodies refused before they are read; connections that stay usable."""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from tests.helpers import ACID, BASE, OILY, serve_process, wait_until_healthy  # noqa: E402

from esmtune import serve  # noqa: E402
from esmtune.cli import build_parser, main  # noqa: E402
from esmtune.errors import EsmtuneError  # noqa: E402
from esmtune.serve import ServeSettings, create_app  # noqa: E402

LIMITS = {
    "max_sequences": 4,
    "max_sequence_residues": 300,
    "max_request_residues": 500,
    "max_body_bytes": 300_000,  # room for the 200 kB nesting bomb, far below 100 MB
}
NESTED = b"[" * 100_000 + b"]" * 100_000
HUGE_TOP_K = b'{"sequences": ["MKV"], "top_k": 1' + b"0" * 5000 + b"}"
CHUNK = 1 << 16


@pytest.fixture(scope="module")
def app(lora_run: Path):
    return create_app(lora_run, batch_wait_ms=0, device="cpu", **LIMITS)


@pytest.fixture(scope="module")
def client(app) -> Iterator[TestClient]:
    # A server error shows as a 500 answer here, as a client would see it, not as a raise.
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _detail(answer: httpx.Response) -> str:
    detail = answer.json()["detail"]
    assert isinstance(detail, str), answer.text  # the one error model: a sentence
    return detail


# --- A. Bad input is a 4xx, and the client goes on.


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (NESTED, 400, ["nested too deeply", '{"sequences"']),
        (HUGE_TOP_K, 422, ["5001 digits", "top_k", "1 to 1000000"]),
        (b'{"sequences": ["MKV"], "top_k": NaN}', 400, ["NaN is not a JSON number"]),
        (b'{"sequences": ["MKV"], "top_k": 10000001}', 422, ["top_k", "1 to 1000000"]),
    ],
    ids=["nested", "huge-top-k", "nan", "top-k-over"],
)
def test_unreadable_json_is_a_4xx_and_the_next_request_works(
    client: TestClient, body: bytes, status: int, words: list[str]
) -> None:
    answer = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text[:300]
    for word in words:
        assert word in _detail(answer)
    assert client.post("/predict", json={"sequences": [ACID]}).status_code == 200


@pytest.mark.parametrize(
    ("query", "words"),
    [("top_k=abc", ["query parameter top_k", "'abc'"]), ("top_k=0", ["top_k", "'0'"])],
)
def test_fastapis_own_422_is_one_sentence(client: TestClient, query: str, words) -> None:
    answer = client.post(f"/predict?{query}", json={"sequences": [ACID]})
    assert answer.status_code == 422
    for word in words:
        assert word in _detail(answer)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (">P1\nMK\x0bV\n", ["line 2", "U+000B"]),  # a vertical tab would split the line
        (">P1\nMKıV\n", ["line 2", "'ı'"]),  # upper() would make it an I
        ("MKV\nMKß\n", ["line 2", "'ß'"]),  # ...and this SS
    ],
)
def test_text_that_normalisation_would_hide_is_refused(client, content, words) -> None:
    answer = client.post("/predict", content=content, headers={"Content-Type": "text/plain"})
    assert answer.status_code == 422, answer.text
    for word in words:
        assert word in _detail(answer)


def test_json_sequences_and_ids_are_checked_as_the_schema_says(client: TestClient) -> None:
    refused = [
        {"sequences": ["MK\u00a0V"]},  # a no-break space: whitespace to Python, not to us
        {"sequences": [{"id": True, "sequence": ACID}]},
        {"sequences": [{"id": " \u3000", "sequence": ACID}]},
        {"sequences": [{"id": 2**60, "sequence": ACID}]},
    ]
    for body in refused:
        assert client.post("/predict", json=body).status_code == 422, body
    # Fields the server does not read may hold any JSON, even a number of 5,000 digits.
    record = b'{"id": 7, "sequence": "%s", "note": [%s]}' % (ACID.encode(), b"9" * 5000)
    answer = client.post(
        "/predict",
        content=b'{"sequences": [%s], "top_k": 2.0}' % record,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["id"] == "7"
    assert len(answer.json()["predictions"][0]["top_k"]) == 2


def _call(app, headers: dict[str, str], body_chunks: Iterator[bytes]) -> tuple[int, dict, int]:
    """Drive the ASGI app directly: status, JSON answer and how many body bytes it pulled."""
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        chunk = next(body_chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), pulled


def test_a_declared_oversized_body_is_refused_unread(app) -> None:
    def untouchable() -> Iterator[bytes]:
        raise AssertionError("the server read a body it had to refuse")
        yield b""

    headers = {"content-type": "application/json", "content-length": str(100 << 20)}
    status, answer, pulled = _call(app, headers, untouchable())
    assert (status, pulled) == (413, 0)
    for word in ("104857600 bytes", "max_body_bytes", "--max-body-bytes", "300000", "split"):
        assert word in answer["detail"]


def test_a_chunked_body_is_cut_off_at_the_limit(app) -> None:
    stream = (b" " * CHUNK for _ in range((100 << 20) // CHUNK))  # 100 MB if read to the end
    status, answer, pulled = _call(app, {"content-type": "application/json"}, stream)
    assert status == 413 and "max_body_bytes" in answer["detail"]
    assert pulled <= LIMITS["max_body_bytes"] + CHUNK  # stopped at the first piece past it


# --- The same through uvicorn: the connection survives, memory is not spent.


@pytest.fixture(scope="module")
def server(lora_run: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    with serve_process(lora_run, "--batch-wait-ms", "0") as (process, base):
        wait_until_healthy(process, base)
        yield process, base


def _connection(base: str) -> http.client.HTTPConnection:
    url = urlsplit(base)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=60)


@pytest.mark.end_to_end
def test_real_server_keeps_the_connection_after_bad_json(server) -> None:
    connection = _connection(server[1])
    json_type = {"Content-Type": "application/json"}
    connection.request("POST", "/predict", body=NESTED, headers=json_type)
    answer = connection.getresponse()
    assert answer.status == 400 and b"nested" in answer.read()
    first = connection.sock
    for body, status in [(HUGE_TOP_K, 422), (json.dumps({"sequences": [BASE, OILY]}), 200)]:
        connection.request("POST", "/predict", body=body, headers=json_type)
        answer = connection.getresponse()
        assert answer.status == status, answer.read()[:300]
        answer.read()
        assert connection.sock is first  # the same keep-alive connection, not a new one
    connection.close()


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def _open_request(base: str, headers: str) -> socket.socket:
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    sock.sendall(f"POST /predict HTTP/1.1\r\nHost: {url.hostname}\r\n{headers}\r\n".encode())
    return sock


def _status_line(sock: socket.socket) -> str:
    return sock.recv(4096).split(b"\r\n", 1)[0].decode()


@pytest.mark.end_to_end
def test_real_server_stops_reading_a_chunked_upload(server) -> None:
    process, base = server
    before = _rss_kib(process.pid)
    headers = "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    with _open_request(base, headers) as sock:
        sent, piece = 0, b"%x\r\n%s\r\n" % (CHUNK, b" " * CHUNK)
        while sent < 100 << 20 and not select.select([sock], [], [], 0)[0]:
            sock.sendall(piece)
            sent += CHUNK
        assert sent < 100 << 20, "the server read 100 MB without answering"
        assert _status_line(sock).startswith("HTTP/1.1 413 ")
    # The answer came after about max_body_bytes (1 MiB) plus what the sockets buffer.
    assert sent < 24 << 20
    assert _rss_kib(process.pid) - before < 32 << 10  # KiB: the body was not kept


@pytest.mark.end_to_end
def test_real_server_refuses_before_100_continue(server) -> None:
    headers = "Content-Type: application/json\r\nContent-Length: 104857600\r\n"
    with _open_request(server[1], headers + "Expect: 100-continue\r\n") as sock:
        # No body is sent: the answer must come from the headers alone, without "100 Continue".
        assert _status_line(sock).startswith("HTTP/1.1 413 ")


# --- B. Limits that say what they protect.


@pytest.mark.parametrize(
    ("sequences", "words"),
    [
        (
            [{"id": "big", "sequence": "M" * 301}],
            ["'big' (301 residues)", "max_sequence_residues", "--max-sequence-residues", "300"],
        ),
        (
            ["M" * 260, "K" * 260],
            ["520 residues", "max_request_residues", "--max-request-residues", "500", "split"],
        ),
        ([ACID] * 5, ["5 sequences", "max_sequences", "--max-sequences", "is 4", "split"]),
    ],
    ids=["per-sequence", "per-request", "sequences"],
)
def test_each_limit_is_a_413_naming_itself(client: TestClient, sequences, words) -> None:
    answer = client.post("/predict", json={"sequences": sequences})
    assert answer.status_code == 413, answer.text
    for word in words:
        assert word in _detail(answer)


def test_info_reports_every_limit(client: TestClient) -> None:
    limits = client.get("/info").json()["limits"]
    assert limits == {
        **LIMITS,
        "long_sequences": "window",
        "batch_wait_ms": 0,
        "max_batch_tokens": ServeSettings().max_batch_tokens,
    }


def test_the_cli_options_are_the_settings(tmp_path: Path) -> None:
    serve_parser = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    options = {action.dest: action for action in serve_parser._actions}
    for name, spec in ServeSettings.model_fields.items():
        assert options[name].default == spec.default, name
    helps = {action.dest: action.help for action in serve_parser._actions}
    protects = {
        "max_sequence_residues": "titin",
        "max_request_residues": "occupies the model",
        "max_sequences": "per-record work",
        "max_body_bytes": "before the body is read",
    }
    for name, words in protects.items():
        assert words in helps[name] and str(ServeSettings.model_fields[name].default) in helps[name]
    args = build_parser().parse_args(["serve", str(tmp_path)])
    assert ServeSettings.checked({n: getattr(args, n) for n in ServeSettings.model_fields}) == (
        ServeSettings()
    )


def test_settings_problems_are_reported_together(lora_run: Path) -> None:
    with pytest.raises(EsmtuneError) as raised:
        create_app(lora_run, max_sequences=0, max_residues=5, long_sequences="truncate")
    message = str(raised.value)
    assert "max_sequences (--max-sequences) = 0" in message
    assert "max_residues: not a serve setting; did you mean" in message
    assert "long_sequences" in message and "'window'" in message
    with pytest.raises(EsmtuneError, match="raise max_body_bytes"):
        ServeSettings.checked({"max_body_bytes": 1000})


def test_worker_processes_get_the_same_settings(lora_run: Path, monkeypatch) -> None:
    """`--workers N` hands the settings to each worker as JSON; they must arrive whole."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)  # start no processes
    monkeypatch.setenv(serve.SETTINGS_ENV, "")  # restored (unset) after the test
    argv = ["serve", str(lora_run), "--workers", "2", "--device", "cpu", "--max-sequences", "7"]
    assert main([*argv, "--max-sequence-residues", "900", "--batch-wait-ms", "2.5"]) == 0
    with TestClient(serve._app_from_environment()) as worker:
        limits = worker.get("/info").json()["limits"]
    assert (limits["max_sequences"], limits["max_sequence_residues"]) == (7, 900)
    assert limits["batch_wait_ms"] == 2.5


def test_cli_help_names_every_limit() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "esmtune", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for option in ("--max-sequence-residues", "--max-request-residues", "--max-sequences"):
        assert option in result.stdout
    assert "--max-body-bytes" in result.stdout and "--max-residues" not in result.stdout
