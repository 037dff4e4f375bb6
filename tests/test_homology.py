"""The MMseqs2 wrapper: finding the program, saying how to install it, what its numbers mean."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tests.helpers import STANDARD_RESIDUES, point_mutant, random_protein, requires_mmseqs

from esmtune.data.homology import MMSEQS_ENV, THREADS_ENV, MissingMMseqsError, MMseqs, find_mmseqs
from esmtune.errors import EsmtuneError

_PROTEIN = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVV"
_INSTALL_WORDS = (
    "apt install mmseqs2",
    "conda install -c bioconda mmseqs2",
    "brew install mmseqs2",
)


def test_a_missing_mmseqs_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MMSEQS_ENV, raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(MissingMMseqsError) as missing:
        find_mmseqs()
    message = str(missing.value)
    assert "not on PATH" in message and all(words in message for words in _INSTALL_WORDS)
    assert MMSEQS_ENV in message  # and how to point at a binary elsewhere


def test_a_configured_binary_that_is_not_there_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(MMSEQS_ENV, str(tmp_path / "mmseqs"))
    with pytest.raises(MissingMMseqsError, match=f"{MMSEQS_ENV}=.*is not an executable"):
        MMseqs()


def test_a_failing_run_reports_what_mmseqs_said(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A stand-in mmseqs that fails: its words and exit status reach the message."""
    fake = tmp_path / "mmseqs"
    fake.write_text("#!/bin/sh\necho 'Error: out of memory in prefilter' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv(MMSEQS_ENV, str(fake))
    monkeypatch.setenv(THREADS_ENV, "1")
    tool = MMseqs()
    assert tool.binary == fake and tool.threads == 1
    with pytest.raises(EsmtuneError, match=r"(?s)exit status 3.*easy-search.*out of memory"):
        tool.search([_PROTEIN], [_PROTEIN], coverage=0.8)
    assert tool.search([], [_PROTEIN], coverage=0.8) == []  # nothing to run: mmseqs is not called


def test_threads_from_the_environment_must_be_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(EsmtuneError, match=f"{THREADS_ENV}='many'"):
        MMseqs(binary=Path("/bin/true"))


@requires_mmseqs
def test_search_gives_identity_and_the_coverage_of_both_sequences() -> None:
    """Identity is identical columns per aligned column; coverage is per sequence.

    A fragment of half a target aligns at 100% identity over all of itself but half of the
    target: it counts only when the coverage asked for is at most 0.5.
    """
    rng = random.Random(3)
    targets = [random_protein(rng, 200, STANDARD_RESIDUES) for _ in range(4)]
    queries = [point_mutant(targets[0], 0.85, rng), targets[1][:100], random_protein(rng, 200)]
    found = MMseqs(threads=1).search(queries, targets, coverage=0.4)
    best = {hit.query: hit for hit in sorted(found, key=lambda hit: hit.bits)}
    assert set(best) == {0, 1}  # the unrelated query has no hit
    assert best[0].target == 0 and best[0].identity == pytest.approx(0.85, abs=0.01)
    assert best[0].coverage == pytest.approx(1.0, abs=0.01)
    assert best[1].target == 1 and best[1].identity == 1.0
    assert best[1].query_coverage == 1.0 and best[1].target_coverage == pytest.approx(0.5)
    assert best[1].coverage == pytest.approx(0.5)


@requires_mmseqs
def test_clusters_hold_sequences_within_the_identity_of_their_representative() -> None:
    rng = random.Random(4)
    first, second, third = (random_protein(rng, 180, STANDARD_RESIDUES) for _ in range(3))
    sequences = [first, point_mutant(first, 0.9, rng), second, point_mutant(second, 0.5, rng),
                 third]  # fmt: skip
    representative = MMseqs(threads=1).cluster(sequences, identity=0.8, coverage=0.8)
    assert representative[0] == representative[1]  # 90% identical: one cluster
    assert len({representative[2], representative[3], representative[4]}) == 3
    assert len(set(representative)) == 4
    assert all(representative[r] == r for r in representative)  # representatives head their own


def test_sequences_too_short_to_search_are_never_handed_over(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """MMseqs2 stops on a database of peptides ("No k-mer could be extracted"): esmtune does not
    ask it (here a stand-in that would fail), and reads that failure as nothing found."""
    fake = tmp_path / "mmseqs"
    fake.write_text("#!/bin/sh\necho 'No k-mer could be extracted for the database' \nexit 1\n")
    fake.chmod(0o755)
    tool = MMseqs(binary=fake, threads=1)
    peptides = ["MKVLA", "ACDEFGHIKLMNP"]  # 5 and 13 residues
    assert tool.search(peptides, peptides, coverage=0.8) == []
    assert tool.cluster(peptides, identity=0.3, coverage=0.8) == [0, 1]
    long = [random_protein(random.Random(0), 40, STANDARD_RESIDUES)]
    assert tool.search(long, long, coverage=0.8) == []  # it ran, and found nothing
    assert tool.cluster([*peptides, *long], identity=0.3, coverage=0.8) == [0, 1, 2]
