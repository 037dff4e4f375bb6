"""`esmtune predict RUN --interactive`, driven through a pseudo-terminal as a person would.

A pty (Python's ``pty``) gives the command a real terminal: prompts, readline, the echo of
what is typed, Enter and Ctrl-D. The tests type sequences, raw and FASTA, a bad residue, a
header without an id and a sequence longer than a terminal line may be, and read the answers,
which must be what ``esmtune predict --format text`` prints for the same sequences.
"""

from __future__ import annotations

import codecs
import io
import os
import pty
import random
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.helpers import ACID, BASE, OILY

from esmtune.cli import main
from esmtune.data.fasta import SequenceRecord
from esmtune.predict import Predictor, write_predictions

PROMPT = "Enter a sequence: "


class Terminal:
    """A command under a pseudo-terminal: what a person sees, and what they type."""

    def __init__(self, process: subprocess.Popen, master: int) -> None:
        self.process = process
        self.master = master
        self.shown = ""  # everything the terminal showed, carriage returns left out
        self._position = 0  # where the next expect() starts looking
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def expect(self, text: str, seconds: float = 90) -> str:
        """Wait until ``text`` shows after the last match; return what showed up to its end."""
        deadline = time.monotonic() + seconds
        while (found := self.shown.find(text, self._position)) < 0:
            if time.monotonic() > deadline or not self._read(0.2):
                raise AssertionError(
                    f"{text!r} did not show; after the last match the terminal shows:\n"
                    + self.shown[self._position :]
                )
        shown, self._position = self.shown[self._position : found + len(text)], found + len(text)
        return shown

    def type(self, line: str) -> None:
        """Type a line and press Enter."""
        os.write(self.master, line.encode() + b"\r")

    def ctrl_d(self) -> None:
        os.write(self.master, b"\x04")

    def exit_status(self, seconds: float = 30) -> int:
        """The command's exit status, reading what it shows until then."""
        deadline = time.monotonic() + seconds
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        while self._read(0.2):  # what it showed last
            pass
        return self.process.wait(timeout=1)

    def _read(self, seconds: float) -> bool:
        """Read what is there within ``seconds``; False once the command has gone."""
        if select.select([self.master], [], [], seconds)[0]:
            try:
                chunk = os.read(self.master, 1 << 16)
            except OSError:  # EIO: every end of the terminal's other side is closed
                chunk = b""
            self.shown += self._decoder.decode(chunk).replace("\r", "")
            return bool(chunk)
        return self.process.poll() is None


@contextmanager
def terminal(*args: str) -> Iterator[Terminal]:
    """``esmtune ARGS`` running in a new pseudo-terminal; killed if still running at the end."""
    master, slave = pty.openpty()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "dumb"}
    command = [sys.executable, "-m", "esmtune", *args]
    process = subprocess.Popen(
        command, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    try:
        yield Terminal(process, master)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


def text_answer(predictor: Predictor, records: list[SequenceRecord], top_k: int | None) -> str:
    """What `esmtune predict --format text` prints for these records."""
    handle = io.StringIO()
    write_predictions(predictor.predict(records, top_k=top_k), predictor.task, "text", handle)
    return handle.getvalue()


# A sequence longer than a terminal line in canonical mode may be (4,095 characters), in which a
# terminal cuts it; readline reads it whole.
LONG = "M" + "KRKRRKSTGANQ" * 420


@pytest.mark.end_to_end
def test_a_session_answers_each_entry_until_an_empty_line(
    lora_run: Path, lora_predictor: Predictor
) -> None:
    fasta = [SequenceRecord("P1", BASE), SequenceRecord("P2", OILY)]
    with terminal("predict", str(lora_run), "--interactive", "--device", "cpu") as session:
        banner = session.expect(PROMPT)
        assert f"{lora_run}: multiclass model, 3 labels." in banner

        session.type(ACID)
        answer = session.expect(PROMPT).removesuffix(PROMPT)
        expected = text_answer(lora_predictor, [SequenceRecord("seq1", ACID)], None)
        assert answer.endswith(expected), answer

        session.type("MKJLV")  # an invalid residue: said, and the prompt comes back
        error = session.expect(PROMPT)
        assert "error: 1 invalid input sequence(s)" in error
        assert "record 'seq2': invalid residue 'J' at position 3" in error
        session.type(">")  # a FASTA header without an id: said, and the prompt comes back
        session.expect("... ")
        session.type("")
        assert "error: <input>, line 1: header '>' has no sequence id" in session.expect(PROMPT)

        session.type(">P1 a basic one")  # FASTA: records until an empty line
        for line in [BASE, ">P2", OILY, ""]:
            session.expect("... ")
            session.type(line)
        answer = session.expect(PROMPT).removesuffix(PROMPT)
        assert answer.endswith(text_answer(lora_predictor, fasta, None)), answer

        session.type(LONG)
        answer = session.expect(PROMPT)
        assert f"seq3 ({len(LONG)} residues)" in answer  # read whole
        assert "note: 1 sequence(s) longer than the model's 80 residues were read as " in answer

        session.type("")  # an empty line ends the session
        assert session.exit_status() == 0
    assert "Traceback" not in session.shown


# --- multilabel: GO term names in the answers ---------------------------------------------

_OBO = """format-version: 1.2

[Term]
id: GO:0000001
name: charged region

[Term]
id: GO:0000002
name: acidic patch
is_a: GO:0000001 ! charged region

[Term]
id: GO:0000003
name: basic patch
is_a: GO:0000001 ! charged region

[Term]
id: GO:0000004
name: hydrophobic core
"""
_SEGMENTS = {"GO:0000002": "DEDEEDSTGANQ", "GO:0000003": "KRKRRKSTGANQ", "GO:0000004": "LIVLFVMA"}


def _go_pairs(rng: random.Random, count: int) -> list[tuple[str, set[str]]]:
    """Proteins with one segment per term they carry: (sequence, set of GO terms)."""
    pairs = []
    for _ in range(count):
        terms = {t for t in _SEGMENTS if rng.random() < 0.5} or {rng.choice(list(_SEGMENTS))}
        body = "".join("".join(rng.choices(_SEGMENTS[t], k=15)) for t in sorted(terms))
        pairs.append(("M" + body, terms))
    return pairs


@pytest.fixture(scope="module")
def go_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multilabel with an ontology, trained from (sequence, set of terms) pairs by esmtune.fit."""
    import esmtune

    folder = tmp_path_factory.mktemp("go")
    (folder / "mini.obo").write_text(_OBO)
    rng = random.Random(3)
    return esmtune.fit(
        _go_pairs(rng, 48), _go_pairs(rng, 12), task="multilabel",
        model__name=str(tiny_model_dir), data__ontology=str(folder / "mini.obo"),
        model__head_hidden=[32], training__epochs=2, training__batch_size=8,
        output__dir=str(folder), output__name="go",
    )  # fmt: skip


@pytest.mark.end_to_end
def test_multilabel_answers_show_labels_and_the_top_k_with_term_names(go_run: Path) -> None:
    predictor = Predictor.from_run(go_run, device="cpu")
    sequence = "M" + "DEDEEDSTGANQ" * 2
    with terminal("predict", str(go_run), "-i", "--top-k", "2", "--device", "cpu") as session:
        assert "multilabel model, 4 labels." in session.expect(PROMPT)
        session.type(sequence)
        answer = session.expect(PROMPT).removesuffix(PROMPT)
        assert answer.endswith(text_answer(predictor, [SequenceRecord("seq1", sequence)], 2))
        assert "  labels: " in answer and "  top 2:" in answer
        # the parent term scores at least as high as any child: always ranked, with its name
        assert "charged region (GO:0000001)" in answer
        session.type("")
        assert session.exit_status() == 0


# --- exports --------------------------------------------------------------------------------


@pytest.mark.end_to_end
def test_a_session_on_an_export_answers_as_the_run(
    lora_run: Path, lora_predictor: Predictor, tmp_path: Path
) -> None:
    export = tmp_path / "hf"
    args = ["export", str(lora_run), "--format", "hf", "--out", str(export)]
    assert main([*args, "--check-sequences", "0"]) == 0
    with terminal("predict", str(export), "--interactive", "--device", "cpu") as session:
        session.expect(PROMPT)
        session.type(BASE)
        answer = session.expect(PROMPT).removesuffix(PROMPT)
        assert answer.endswith(text_answer(lora_predictor, [SequenceRecord("seq1", BASE)], None))
        session.ctrl_d()  # end of input ends the session too
        assert session.exit_status() == 0
    assert "Traceback" not in session.shown


# --- in process: the model loads once; options that do not fit are refused -----------------


def test_the_model_loads_once_for_every_entry(
    lora_run: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    loads = []
    load = Predictor.load.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Predictor], *args: object, **kwargs: object) -> Predictor:
        loads.append(args)
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(Predictor, "load", classmethod(counted))
    entries = [ACID, "MKJLV", ">P1", BASE, "", OILY, "", "never read"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(entries) + "\n"))
    assert main(["predict", str(lora_run), "--interactive", "--device", "cpu"]) == 0
    assert len(loads) == 1
    out, err = capsys.readouterr()
    assert [line.split(" (")[0] for line in out.splitlines() if not line.startswith(" ")] == [
        "seq1", "P1", "seq3",
    ]  # fmt: skip
    assert "record 'seq2': invalid residue 'J'" in err
    assert PROMPT not in out + err  # input from a pipe: no prompts


def test_interactive_refuses_inputs_and_formats_it_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fasta = tmp_path / "x.fasta"
    args = ["predict", str(tmp_path / "no-run"), str(fasta), "--interactive", "--sequence", "MK"]
    assert main([*args, "--format", "json", "-o", str(tmp_path / "out.tsv")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(
        "error: --interactive reads sequences at its prompt and answers as text: drop FASTA "
        "files, --sequence, --output, --format (or drop --interactive)"
    )
    assert main(["predict", str(tmp_path / "no-run"), "-i", "--format", "text"]) == 2
    assert "no-run" in capsys.readouterr().err  # text is allowed: the run is what is missing
