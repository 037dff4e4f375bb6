"""Gene Ontology support for multi-label prediction: read an OBO file, propagate, stay consistent.

GO annotations follow the true path rule: a protein annotated with a term is also annotated with
every ancestor of that term (over is_a and part_of). Training labels are propagated with
`Ontology.propagate`; a trained run saves `Ontology.ancestors_within(labels)` so that prediction
can make scores hierarchy-consistent with `consistent_scores` without the OBO file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from esmtune.errors import DataError

if TYPE_CHECKING:
    import pronto

# GO writes part_of by name; ontologies converted from OWL use the BFO identifier.
_PART_OF = frozenset({"part_of", "BFO:0000050"})
_OBO_HINT = (
    "is this an OBO 1.4 file such as go-basic.obo from "
    "https://geneontology.org/docs/download-ontology/ ?"
)


@dataclass(frozen=True)
class Ontology:
    """Term names and direct parents of an ontology, obsolete terms left out.

    Attributes:
        names: Term id to term name.
        parents: Term id to its direct is_a and part_of parents.
        source: Where the ontology was read from, for messages.
    """

    names: dict[str, str]
    parents: dict[str, frozenset[str]]
    source: str
    _ancestor_cache: dict[str, frozenset[str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def ancestors(self, term: str) -> frozenset[str]:
        """Every term reachable from `term` over parents, without `term` itself.

        Args:
            term: A term id; an unknown id has no ancestors.

        Returns:
            The transitive closure of `parents`, cached per term.
        """
        cached = self._ancestor_cache.get(term)
        if cached is not None:
            return cached
        found: set[str] = set()
        pending = list(self.parents.get(term, ()))
        while pending:
            parent = pending.pop()
            if parent in found:
                continue
            found.add(parent)
            # A cached parent already carries its whole closure; no need to walk it again.
            known = self._ancestor_cache.get(parent)
            if known is not None:
                found |= known
            else:
                pending.extend(self.parents.get(parent, ()))
        found.discard(term)
        result = frozenset(found)
        self._ancestor_cache[term] = result
        return result

    def propagate(self, terms: Iterable[str]) -> set[str]:
        """Apply the true path rule: the terms plus all their ancestors.

        Args:
            terms: Term ids, e.g. the GO annotations of one protein; unknown ids are kept.

        Returns:
            The propagated set of term ids.
        """
        propagated = set(terms)
        for term in list(propagated):
            propagated |= self.ancestors(term)
        return propagated

    def ancestors_within(self, labels: list[str]) -> dict[str, list[str]]:
        """For each label, its ancestors that are labels too.

        A run saves this so prediction can enforce consistency without the OBO file.

        Args:
            labels: The label set of a model, in column order.

        Returns:
            Label to the sorted list of its ancestors within `labels`.
        """
        label_set = set(labels)
        return {label: sorted(self.ancestors(label) & label_set) for label in labels}

    def name(self, term: str) -> str:
        """The term's name, or the id itself when the term is unknown."""
        return self.names.get(term, term)


def read_obo(path: Path | str) -> Ontology:
    """Read an OBO file (e.g. go-basic.obo) with pronto, keeping is_a and part_of edges.

    Args:
        path: The OBO file.

    Returns:
        The ontology without obsolete terms (edges to obsolete terms are dropped too).

    Raises:
        DataError: If the file is missing, malformed, refers to undefined terms or relations,
            or defines no terms.
    """
    import pronto

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; download go-basic.obo or fix the path")
    try:
        # pronto warns about every clause it does not model; none of them matter here.
        from pronto.utils.warnings import ProntoWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ProntoWarning)
            # import_depth=0: never follow `import:` headers over the network.
            ontology = pronto.Ontology(str(path), import_depth=0)
            terms = [term for term in ontology.terms() if not term.obsolete]
            live = {term.id for term in terms}
            names = {term.id: term.name or term.id for term in terms}
            parents = {
                term.id: frozenset(
                    parent.id
                    for parent in _direct_parents(term)
                    if parent.id in live and parent.id != term.id
                )
                for term in terms
            }
    except SyntaxError as error:
        raise DataError(
            f"{path}, line {error.lineno}: cannot parse ({error.msg}: {error.text!r}); " + _OBO_HINT
        ) from error
    except KeyError as error:
        raise DataError(
            f"{path}: refers to {error.args[0]!r}, which the file does not define as a term or "
            "[Typedef]; add it or use a complete release such as go-basic.obo"
        ) from error
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a text file; {_OBO_HINT}") from error
    if not names:
        raise DataError(f"{path}: no (non-obsolete) [Term] stanzas; {_OBO_HINT}")
    return Ontology(names=names, parents=parents, source=str(path))


def _direct_parents(term: pronto.Term) -> Iterator[pronto.Term]:
    """Direct is_a superclasses and part_of targets of a pronto term."""
    yield from term.superclasses(distance=1, with_self=False)
    for relation, targets in term.relationships.items():
        if relation.id in _PART_OF:
            yield from targets


def consistent_scores(probabilities: np.ndarray, ancestors_index: list[list[int]]) -> np.ndarray:
    """Raise every parent's score to at least the best score among its descendants.

    A protein cannot be in the nucleus without being in an organelle, so a prediction that scores
    the child above the parent is incoherent; taking the maximum fixes it without lowering any
    score.

    Args:
        probabilities: Scores of shape (n, L).
        ancestors_index: For each label column j, the columns of all its ancestors (transitive,
            as from `Ontology.ancestors_within`) within the label set.

    Returns:
        A new (n, L) array; the input is left unchanged.

    Raises:
        ValueError: If the shapes disagree or an index is out of range.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(ancestors_index):
        raise ValueError(
            f"probabilities of shape {probabilities.shape} need {len(ancestors_index)} columns, "
            "one per entry of ancestors_index"
        )
    consistent = probabilities.copy()
    for column, ancestors in enumerate(ancestors_index):
        if not ancestors:
            continue
        columns = np.asarray(ancestors, dtype=int)
        if columns.min() < 0 or columns.max() >= probabilities.shape[1]:
            raise ValueError(f"ancestors_index[{column}] = {ancestors} is out of range")
        # The ancestor lists are transitive, so comparing with the original child scores suffices.
        consistent[:, columns] = np.maximum(consistent[:, columns], probabilities[:, column, None])
    return consistent
