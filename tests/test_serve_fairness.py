"""`esmtune serve` under a mixed load: short requests are not starved behind long ones, and long
ones are not starved by a stream of short ones. First the worker's order with a model that only
records its calls, then the latencies with the real tiny model."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.helpers import ACID, BASE, OILY  # noqa: E402

from esmtune.data.fasta import SequenceRecord  # noqa: E402
from esmtune.serve import _Batcher, create_app  # noqa: E402


class _RecordingModel:
    """Stands in for the Predictor: answers at once, remembers the ids of every call."""

    labels = ("a", "b", "c")

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.first_call = threading.Event()
        self.go_on = threading.Event()
        self.during_call: Any = None  # run in the model's thread, inside each call

    def predict(self, records: list[SequenceRecord], top_k: int) -> list[dict[str, Any]]:
        self.calls.append([record.id for record in records])
        self.first_call.set()
        self.go_on.wait(30)
        if self.during_call is not None:
            self.during_call()
        ranked = [("a", 0.5), ("b", 0.3), ("c", 0.2)][:top_k]
        return [{"id": record.id, "top_k": ranked} for record in records]


def _records(prefix: str, count: int, residues: int) -> list[SequenceRecord]:
    return [SequenceRecord(f"{prefix}{i}", "M" * residues) for i in range(count)]


async def _started(batcher: _Batcher) -> asyncio.Task:
    worker = asyncio.create_task(batcher.run_forever())
    await asyncio.sleep(0)
    return worker


def test_short_requests_run_between_the_slices_of_a_long_one() -> None:
    model = _RecordingModel()
    # 100 tokens per call: the long request (10 x 50 tokens) runs in five slices of two.
    batcher = _Batcher(model, wait_seconds=0, max_tokens=100)  # type: ignore[arg-type]

    async def scenario() -> tuple[list[dict], list[list[dict]]]:
        worker = await _started(batcher)
        long = asyncio.create_task(batcher.submit(_records("L", 10, 48), top_k=None))
        await asyncio.to_thread(model.first_call.wait, 30)  # the first slice is running
        shorts = [
            asyncio.create_task(batcher.submit(_records(f"S{i}.", 1, 10), top_k=1))
            for i in range(3)
        ]
        await asyncio.sleep(0.05)  # the short requests are queued
        model.go_on.set()
        answers = await long, await asyncio.gather(*shorts)
        worker.cancel()
        return answers

    long_answer, short_answers = asyncio.run(scenario())
    assert model.calls[0] == ["L0", "L1"]
    assert model.calls[1] == ["S0.0", "S1.0", "S2.0"]  # before the long one's second slice
    assert model.calls[2:] == [[f"L{i}", f"L{i + 1}"] for i in range(2, 10, 2)]
    assert [row["id"] for row in long_answer] == [f"L{i}" for i in range(10)]  # request order
    assert all(len(row["top_k"]) == 3 for row in long_answer)  # top_k per request
    assert [[row["id"] for row in answer] for answer in short_answers] == [
        ["S0.0"],
        ["S1.0"],
        ["S2.0"],
    ]
    assert all(len(answer[0]["top_k"]) == 1 for answer in short_answers)
    assert (batcher.requests_served, batcher.sequences_served) == (4, 13)


def test_a_stream_of_short_requests_does_not_starve_a_long_one() -> None:
    """A short request arrives during every model call, so one is always waiting."""
    model = _RecordingModel()
    model.go_on.set()
    batcher = _Batcher(model, wait_seconds=0, max_tokens=100)  # type: ignore[arg-type]
    long_size = 10 * 50  # tokens
    finished_after: dict[str, int] = {}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        shorts: list[asyncio.Task] = []

        async def one_more_short() -> None:
            records = _records(f"S{len(shorts)}.", 1, 10)  # 12 tokens
            shorts.append(asyncio.ensure_future(batcher.submit(records, top_k=None)))
            await asyncio.sleep(0)  # queued before the call returns

        def during_call() -> None:
            if len(model.calls) < 200:
                asyncio.run_coroutine_threadsafe(one_more_short(), loop).result(30)

        model.during_call = during_call
        worker = await _started(batcher)
        long = asyncio.create_task(batcher.submit(_records("L", 10, 48), top_k=None))
        long.add_done_callback(lambda _: finished_after.setdefault("long", len(model.calls)))
        await long
        await asyncio.gather(*shorts)
        worker.cancel()

    asyncio.run(scenario())
    assert model.calls[1][0].startswith("S")  # shortest first: a short went before slice two
    long_calls = [i for i, call in enumerate(model.calls) if call[0].startswith("L")]
    assert len(long_calls) == 5  # sliced, with short requests served in between
    # Aging: the long request ranks ahead of every short that arrives once the work done since
    # it arrived reaches its own size (about 500 / 12 short calls), so it ends within ~45 calls.
    assert finished_after["long"] <= 1 + long_size // 12 + 5, model.calls[:60]


def test_a_failing_model_call_answers_its_requests_and_the_worker_goes_on() -> None:
    class Failing(_RecordingModel):
        def predict(self, records: list[SequenceRecord], top_k: int) -> list[dict[str, Any]]:
            if any(record.id == "bad0" for record in records):
                raise RuntimeError("out of memory")
            return super().predict(records, top_k)

    model = Failing()
    model.go_on.set()
    batcher = _Batcher(model, wait_seconds=0, max_tokens=100)  # type: ignore[arg-type]

    async def scenario() -> list:
        worker = await _started(batcher)
        failed = batcher.submit(_records("bad", 1, 10), top_k=None)
        answers = await asyncio.gather(failed, return_exceptions=True)
        answers.append(await batcher.submit(_records("ok", 1, 10), top_k=None))
        worker.cancel()
        return answers

    error, answer = asyncio.run(scenario())
    assert isinstance(error, RuntimeError) and answer[0]["id"] == "ok0"
    assert not batcher.pending


# --- The real tiny model through the app: latencies under a mixed load.

LONG_SEQUENCE = "M" + "KRKRRKSTGANQDEDEEDLIVLFW" * 80  # 1921 residues: 25+ windows of 80
LONG_COUNT = 100
SHORTS = [ACID, BASE, OILY, ACID[:12], BASE[3:]]


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def test_short_requests_stay_fast_behind_a_long_one(lora_run: Path, lora_predictor) -> None:
    app = create_app(
        lora_run,
        device="cpu",
        batch_wait_ms=2,
        max_batch_tokens=4096,  # slices of two long sequences
        max_request_residues=LONG_COUNT * len(LONG_SEQUENCE),
        max_sequences=LONG_COUNT,
    )
    long_body = {
        "sequences": [{"id": f"L{i}", "sequence": LONG_SEQUENCE} for i in range(LONG_COUNT)]
    }

    async def timed(http: httpx.AsyncClient, body: dict) -> tuple[float, float, httpx.Response]:
        start = time.perf_counter()
        answer = await http.post("/predict", json=body)
        return start, time.perf_counter(), answer

    async def scenario() -> tuple[tuple, list[tuple]]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=300) as http,
        ):
            await http.post("/predict", json={"sequences": [ACID]})  # warm up
            long = asyncio.create_task(timed(http, long_body))
            await asyncio.sleep(0.2)  # the long request is running
            shorts = []
            for i in range(30):  # a short request every 40 ms while it runs
                body = {"sequences": [{"id": f"S{i}", "sequence": SHORTS[i % len(SHORTS)]}]}
                shorts.append(asyncio.create_task(timed(http, body)))
                await asyncio.sleep(0.04)
            return await long, list(await asyncio.gather(*shorts))

    (long_start, long_end, long_answer), shorts = asyncio.run(scenario())
    assert long_answer.status_code == 200, long_answer.text[:300]
    long_results = long_answer.json()["predictions"]
    assert [row["id"] for row in long_results] == [f"L{i}" for i in range(LONG_COUNT)]
    expected = lora_predictor.predict({"L0": LONG_SEQUENCE})[0]
    assert long_results[-1]["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    for i, (_, _, answer) in enumerate(shorts):
        assert answer.status_code == 200
        (row,) = answer.json()["predictions"]
        want = lora_predictor.predict({f"S{i}": SHORTS[i % len(SHORTS)]})[0]
        assert row["id"] == f"S{i}" and row["label"] == want["label"]

    long_seconds = long_end - long_start
    latencies = [end - start for start, end, _ in shorts]
    sent_while_running = [s for s in shorts if s[0] < long_end]
    median, p95 = statistics.median(latencies), _p95(latencies)
    print(f"\nlong request {long_seconds:.2f} s; {len(shorts)} short requests: median ", end="")
    print(f"{median:.3f} s, p95 {p95:.3f} s, max {max(latencies):.3f} s")
    assert len(sent_while_running) == len(shorts), "the long request ended before the stream"
    assert sum(end < long_end for _, end, _ in shorts) >= 0.9 * len(shorts)
    assert p95 < 0.15 * long_seconds
