"""MMseqs2 for what esmtune asks of homology: clusters of similar sequences, nearest neighbours.

Homology-aware splits (``esmtune data split``) and leakage measured by identity (the data check)
both need alignments of protein sequences at scale; MMseqs2 does that in seconds where an
all-against-all Smith-Waterman in Python would take hours. It is a system program, not a Python
package, so it is found on ``PATH`` (or at ``$ESMTUNE_MMSEQS``) and run in a temporary folder.

What the numbers mean, in MMseqs2's terms, everywhere in esmtune:

* **identity** is the fraction (0 to 1) of aligned columns whose residues are identical, over
  the columns of the local alignment (``fident``; ``--seq-id-mode 0``);
* **coverage** is the fraction of a sequence's residues inside that alignment. A pair counts when
  the alignment covers at least ``coverage`` of *both* sequences (``-c coverage --cov-mode 0``),
  so a short shared domain of two long proteins does not make them similar; neither does a
  fragment with the whole protein it came from (lower the coverage to count those);
* alignments are kept when their E-value is at most 1e-3 (MMseqs2's default), so "no hit"
  means no significant alignment over that coverage;
* sequences shorter than :data:`SEARCHABLE_LENGTH` residues give MMseqs2's prefilter no k-mer
  to start from: they are never handed over, align to nothing and form clusters of their own.

Sequences are handed over under made-up names (``s0``, ``s1`` ...): ids in tables may hold
spaces or repeat across splits, and MMseqs2 keeps only the first word of a header.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from esmtune.errors import EsmtuneError

__all__ = [
    "INSTALL_HINT",
    "MMSEQS_ENV",
    "SEARCHABLE_LENGTH",
    "THREADS_ENV",
    "Alignment",
    "MMseqs",
    "MissingMMseqsError",
    "closest_alignments",
    "find_mmseqs",
]

MMSEQS_ENV = "ESMTUNE_MMSEQS"  # a binary that is not on PATH (or another version)
THREADS_ENV = "ESMTUNE_MMSEQS_THREADS"  # threads when a command does not say [every core]
_INSTALL = (
    "install MMseqs2: `sudo apt install mmseqs2` (Debian, Ubuntu), `conda install -c bioconda "
    "mmseqs2` or `brew install mmseqs2` (macOS)"
)
INSTALL_HINT = f"{_INSTALL}, or set {MMSEQS_ENV} to an mmseqs program elsewhere"
# MMseqs2's spaced k-mers span 14 residues: from a shorter sequence the prefilter draws none,
# and a database of only such sequences stops it ("No k-mer could be extracted").
SEARCHABLE_LENGTH = 14
_NO_KMER = "No k-mer could be extracted"
# Columns asked of easy-search, in this order (BLAST-tab without a header).
_SEARCH_COLUMNS = ("query", "target", "fident", "qcov", "tcov", "evalue", "bits")
# Lines of MMseqs2's own output kept in an error message: the end, where it says what failed.
_OUTPUT_TAIL = 15


class MissingMMseqsError(EsmtuneError):
    """MMseqs2 is not installed (or ``$ESMTUNE_MMSEQS`` names no program); says how to get it."""


@dataclass(frozen=True, slots=True)
class Alignment:
    """One alignment of a query sequence to a target, as MMseqs2 reports it.

    ``query`` and ``target`` are positions in the lists given to :meth:`MMseqs.search`.
    """

    query: int
    target: int
    identity: float  # identical columns / alignment columns, 0 to 1
    query_coverage: float  # share of the query's residues in the alignment
    target_coverage: float  # share of the target's residues in the alignment
    evalue: float
    bits: float

    @property
    def coverage(self) -> float:
        """The smaller coverage: what ``-c`` with ``--cov-mode 0`` holds to the threshold."""
        return min(self.query_coverage, self.target_coverage)


def closest_alignments(
    alignments: Iterable[Alignment], per: Literal["query", "target"] = "query"
) -> dict[int, Alignment]:
    """Per query (or per target), its most identical alignment.

    Ties go to the higher score, then to the first sequence on the other side, so the choice
    does not depend on the order MMseqs2 wrote the lines in.
    """
    other = "target" if per == "query" else "query"
    best: dict[int, Alignment] = {}
    for found in alignments:
        key = getattr(found, per)
        held = best.get(key)
        if held is None or (found.identity, found.bits, -getattr(found, other)) > (
            held.identity, held.bits, -getattr(held, other),
        ):  # fmt: skip
            best[key] = found
    return best


def _default_threads() -> int:
    """``$ESMTUNE_MMSEQS_THREADS``, else the cores this process may use."""
    configured = os.environ.get(THREADS_ENV, "").strip()
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            raise EsmtuneError(f"{THREADS_ENV}={configured!r}: give a whole number of threads")
        return int(configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def find_mmseqs() -> Path:
    """The mmseqs program: ``$ESMTUNE_MMSEQS`` if set, else ``mmseqs`` on ``PATH``.

    Raises:
        MissingMMseqsError: Saying where it looked and how to install MMseqs2.
    """
    configured = os.environ.get(MMSEQS_ENV, "").strip()
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise MissingMMseqsError(
                f"{MMSEQS_ENV}={configured} is not an executable program; fix the path, or "
                f"unset it to use mmseqs from PATH ({_INSTALL})"
            )
        return Path(found)
    found = shutil.which("mmseqs")
    if found is None:
        raise MissingMMseqsError(f"MMseqs2 (the mmseqs program) is not on PATH; {INSTALL_HINT}")
    return Path(found)


class MMseqs:
    """MMseqs2's easy workflows on lists of sequences, each run in its own temporary folder.

    Args:
        binary: The mmseqs program [:func:`find_mmseqs`].
        threads: Threads each run may use [``$ESMTUNE_MMSEQS_THREADS``, else every core].

    Raises:
        MissingMMseqsError: When no binary is given and none is found.
    """

    def __init__(self, binary: Path | None = None, threads: int | None = None) -> None:
        self.binary = binary or find_mmseqs()
        self.threads = threads or _default_threads()

    def version(self) -> str:
        """The version MMseqs2 reports (e.g. ``14-7e284``), for summaries."""
        return (self._run(["version"], Path.cwd()) or "").strip()

    def cluster(self, sequences: Sequence[str], identity: float, coverage: float) -> list[int]:
        """Cluster sequences with ``easy-cluster`` (cascaded, greedy set cover).

        Every member of a cluster aligns to the cluster's representative with at least
        ``identity`` over at least ``coverage`` of both sequences; members of different
        clusters may still be that similar to each other (set cover is not transitive).
        Sequences too short to search are clusters of their own.

        Args:
            sequences: Residues, one string per sequence.
            identity: Least identity (0 to 1) to join a cluster (``--min-seq-id``).
            coverage: Least share of both sequences the alignment covers (``-c``).

        Returns:
            For each sequence, the position of its cluster's representative.

        Raises:
            EsmtuneError: When MMseqs2 fails; its own output is in the message.
        """
        representative = list(range(len(sequences)))
        searchable = _searchable(sequences)
        if not searchable:
            return representative
        with tempfile.TemporaryDirectory(prefix="esmtune-mmseqs-") as folder:
            work = Path(folder)
            _write_fasta(work / "input.fasta", sequences, searchable)
            ran = self._run(
                ["easy-cluster", "input.fasta", "result", "tmp", "--min-seq-id", str(identity),
                 "-c", str(coverage), "--cov-mode", "0", *self._common()],
                work, _NO_KMER,
            )  # fmt: skip
            if ran is None:
                return representative
            for line in (work / "result_cluster.tsv").read_text().splitlines():
                if line.strip():
                    head, member = line.split("\t")
                    representative[_position(member)] = _position(head)
        return representative

    def search(
        self,
        queries: Sequence[str],
        targets: Sequence[str],
        coverage: float,
        min_identity: float = 0.0,
    ) -> list[Alignment]:
        """Align each query to the targets with ``easy-search``; every alignment kept.

        Args:
            queries: Residues of the sequences searched for.
            targets: Residues of the sequences searched in.
            coverage: Least share of both sequences an alignment covers (``-c``,
                ``--cov-mode 0``).
            min_identity: Least identity of an alignment reported (``--min-seq-id``).

        Returns:
            Alignments of significant hits (E-value at most 1e-3), in no particular order;
            sequences too short to search have none.

        Raises:
            EsmtuneError: When MMseqs2 fails; its own output is in the message.
        """
        searched, searched_in = _searchable(queries), _searchable(targets)
        if not searched or not searched_in:
            return []
        with tempfile.TemporaryDirectory(prefix="esmtune-mmseqs-") as folder:
            work = Path(folder)
            _write_fasta(work / "queries.fasta", queries, searched)
            _write_fasta(work / "targets.fasta", targets, searched_in)
            ran = self._run(
                ["easy-search", "queries.fasta", "targets.fasta", "hits.tsv", "tmp",
                 "--min-seq-id", str(min_identity), "-c", str(coverage), "--cov-mode", "0",
                 "--format-mode", "0", "--format-output", ",".join(_SEARCH_COLUMNS),
                 *self._common()],
                work, _NO_KMER,
            )  # fmt: skip
            if ran is None:
                return []
            return [
                _alignment(line)
                for line in (work / "hits.tsv").read_text().splitlines()
                if line.strip()
            ]

    def _common(self) -> list[str]:
        """Options of every run: its threads, and MMseqs2 saying only what went wrong."""
        return ["--threads", str(self.threads), "-v", "1"]

    def _run(self, arguments: list[str], folder: Path, found_nothing: str = "") -> str | None:
        """Run mmseqs in ``folder``; its standard output, or an error ending with its own words.

        ``found_nothing``: words of a failure that only means nothing could be found (no k-mer
        in the whole database: every sequence too short or masked); then None.

        Raises:
            EsmtuneError: When it cannot start or exits with another failure.
        """
        command = [str(self.binary), *arguments]
        try:
            done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
        except OSError as error:
            raise EsmtuneError(f"cannot run {self.binary}: {error}; {INSTALL_HINT}") from None
        if done.returncode != 0 and found_nothing and found_nothing in done.stdout + done.stderr:
            return None
        if done.returncode != 0:
            said = (done.stderr.strip() + "\n" + done.stdout.strip()).strip().splitlines()
            tail = "\n".join(f"  {line}" for line in said[-_OUTPUT_TAIL:]) or "  (no output)"
            raise EsmtuneError(
                f"MMseqs2 failed (exit status {done.returncode}) running `mmseqs "
                f"{' '.join(arguments[:1])}`; it said:\n{tail}"
            )
        return done.stdout


def _searchable(sequences: Sequence[str]) -> list[int]:
    """Positions of the sequences long enough for MMseqs2 to search."""
    return [i for i, sequence in enumerate(sequences) if len(sequence) >= SEARCHABLE_LENGTH]


def _write_fasta(path: Path, sequences: Sequence[str], chosen: list[int]) -> None:
    """The ``chosen`` sequences under their positions as names (``>s0``), one line each."""
    with path.open("w") as handle:
        for index in chosen:
            handle.write(f">s{index}\n{sequences[index]}\n")


def _position(name: str) -> int:
    """The position a name written by :func:`_write_fasta` stands for."""
    return int(name.removeprefix("s"))


def _alignment(line: str) -> Alignment:
    """One line of easy-search's output, in the order of ``_SEARCH_COLUMNS``."""
    query, target, identity, query_coverage, target_coverage, evalue, bits = line.split("\t")
    return Alignment(
        _position(query), _position(target), float(identity), float(query_coverage),
        float(target_coverage), float(evalue), float(bits),
    )  # fmt: skip
