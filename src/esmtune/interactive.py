"""``esmtune predict RUN --interactive``: a prompt that answers each sequence as it is entered.

The model is loaded once, before the first prompt; then each entry is predicted and answered
until an empty line or the end of input (Ctrl-D). An entry is one raw sequence on one line, or
FASTA (a ``>id`` line, then sequence lines, possibly several records) ended by an empty line,
so that a record pasted from a file is read whole. A bad entry (an invalid residue, a header
without an id) prints its error and the prompt comes back: one typo does not cost the loaded
model.

The session reads lines through a function (``input`` in a terminal, with readline's line
editing, which also lifts the terminal's 4,095-character line limit that would cut a pasted
long sequence) and answers through another, so that the command line decides where text goes
and how predictions look; this module knows neither the model nor the task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from esmtune.data.fasta import SequenceRecord, parse_fasta
from esmtune.errors import EsmtuneError

__all__ = ["CONTINUATION", "PROMPT", "Session"]

PROMPT = "Enter a sequence: "
# Shown for the lines of a FASTA entry after its header.
CONTINUATION = "... "
# Where messages say an entry came from.
_SOURCE = "<input>"


class _Predicts(Protocol):
    """What a session needs of a predictor (:class:`~esmtune.predict.Predictor` has it)."""

    def predict(
        self, sequences: list[SequenceRecord], top_k: int | None = None
    ) -> list[dict[str, Any]]:
        """One result per record, in order; raises EsmtuneError on a bad sequence."""
        ...


@dataclass
class Session:
    """A prompt loop over a loaded predictor.

    Attributes:
        predictor: The loaded model (loaded once, before the session).
        answer: Shows the predictions of one entry (the task's text format).
        read: Reads one line after showing its prompt; raises EOFError at the end of input.
        say: Shows a message (errors, notes) apart from the answers.
        top_k: How many ranked labels each answer shows (None: the task's default).
        prompts: Whether to show prompts (not when the input is a pipe).
    """

    predictor: _Predicts
    answer: Callable[[list[dict[str, Any]]], None]
    read: Callable[[str], str]
    say: Callable[[str], None]
    top_k: int | None = None
    prompts: bool = True
    _raw_entries: int = field(default=0, init=False)  # raw sequences are seq1, seq2, ...

    def run(self) -> int:
        """Answer entries until an empty line or the end of input; returns how many were.

        Only errors the user can fix (:class:`~esmtune.errors.EsmtuneError`) are caught and
        shown; anything else is a bug and ends the session with its traceback.
        """
        answered = 0
        ended = False
        while not ended:
            try:
                records, ended = self._entry()
                if not records:
                    break
                results = self.predictor.predict(records, top_k=self.top_k)
            except EsmtuneError as error:
                self.say(f"error: {error}")
                continue
            self.answer(results)
            answered += 1
        return answered

    def _line(self, prompt: str) -> str | None:
        """One line without its end, or None at the end of input."""
        try:
            return self.read(prompt if self.prompts else "")
        except EOFError:
            if self.prompts:
                self.say("")  # the terminal's cursor sits after the prompt: end that line
            return None

    def _entry(self) -> tuple[list[SequenceRecord], bool]:
        """The next entry's records (none: the session ends) and whether input ended with it.

        Raises:
            DataError: When FASTA text cannot be read (a header without an id).
        """
        line = self._line(PROMPT)
        if line is None or not line.strip():
            return [], True
        if not line.lstrip().startswith(">"):
            self._raw_entries += 1
            return [SequenceRecord(f"seq{self._raw_entries}", line.strip())], False
        lines, ended = [line], False
        while True:
            more = self._line(CONTINUATION)
            if more is None:
                ended = True
                break
            if not more.strip():
                break
            lines.append(more)
        return list(parse_fasta(lines, _SOURCE)), ended
