"""Gene Ontology: reading OBO, the true path rule and hierarchy-consistent scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from esmtune.data.ontology import Ontology, consistent_scores, read_obo
from esmtune.errors import DataError

ROOT, ENTITY, ORGANELLE, NUCLEUS, CYTOPLASM, OBSOLETE = (
    "GO:0005575",
    "GO:0110165",
    "GO:0043226",
    "GO:0005634",
    "GO:0005737",
    "GO:0000001",
)

OBO = """\
format-version: 1.2
ontology: go

[Term]
id: GO:0005575
name: cellular_component
namespace: cellular_component

[Term]
id: GO:0110165
name: cellular anatomical entity
namespace: cellular_component
is_a: GO:0005575 ! cellular_component

[Term]
id: GO:0043226
name: organelle
is_a: GO:0110165 ! cellular anatomical entity

[Term]
id: GO:0005634
name: nucleus
is_a: GO:0043226 ! organelle

[Term]
id: GO:0005737
name: cytoplasm
relationship: part_of GO:0110165 ! cellular anatomical entity

[Term]
id: GO:0000001
name: obsolete mitochondrion inheritance
is_obsolete: true

[Typedef]
id: part_of
name: part of
is_transitive: true
"""


@pytest.fixture
def ontology(tmp_path: Path) -> Ontology:
    path = tmp_path / "go.obo"
    path.write_text(OBO)
    return read_obo(path)


def test_names_and_direct_parents_over_is_a_and_part_of(ontology: Ontology) -> None:
    assert ontology.name(NUCLEUS) == "nucleus"
    assert ontology.name("GO:9999999") == "GO:9999999"
    assert ontology.parents == {
        ROOT: frozenset(),
        ENTITY: frozenset({ROOT}),
        ORGANELLE: frozenset({ENTITY}),
        NUCLEUS: frozenset({ORGANELLE}),
        CYTOPLASM: frozenset({ENTITY}),
    }
    assert ontology.source.endswith("go.obo")


def test_obsolete_terms_are_left_out(ontology: Ontology) -> None:
    assert OBSOLETE not in ontology.names
    assert OBSOLETE not in ontology.parents


def test_ancestors_are_transitive_and_exclude_the_term(ontology: Ontology) -> None:
    assert ontology.ancestors(NUCLEUS) == {ORGANELLE, ENTITY, ROOT}
    assert ontology.ancestors(CYTOPLASM) == {ENTITY, ROOT}
    assert ontology.ancestors(ROOT) == frozenset()
    assert ontology.ancestors("GO:9999999") == frozenset()
    assert ontology.ancestors(NUCLEUS) is ontology.ancestors(NUCLEUS)  # cached


def test_propagate_applies_the_true_path_rule(ontology: Ontology) -> None:
    assert ontology.propagate([NUCLEUS]) == {NUCLEUS, ORGANELLE, ENTITY, ROOT}
    assert ontology.propagate([CYTOPLASM, "GO:9999999"]) == {CYTOPLASM, ENTITY, ROOT, "GO:9999999"}
    assert ontology.propagate([]) == set()


def test_ancestors_within_keeps_only_labels(ontology: Ontology) -> None:
    labels = [NUCLEUS, CYTOPLASM, ENTITY, ORGANELLE]
    assert ontology.ancestors_within(labels) == {
        NUCLEUS: [ORGANELLE, ENTITY],
        CYTOPLASM: [ENTITY],
        ENTITY: [],
        ORGANELLE: [ENTITY],
    }


def test_malformed_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.obo"
    path.write_text("format-version: 1.2\n\n[Term]\nid: GO:0000002\nname: a\nis_a GO:0005575\n")
    with pytest.raises(DataError) as caught:
        read_obo(path)
    message = str(caught.value)
    assert "broken.obo" in message
    assert "line 6" in message
    assert "go-basic.obo" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_obo(tmp_path / "absent.obo")


def test_file_without_terms(tmp_path: Path) -> None:
    path = tmp_path / "empty.obo"
    path.write_text("format-version: 1.2\nontology: go\n")
    with pytest.raises(DataError, match=r"empty\.obo: no"):
        read_obo(path)


def test_undefined_parent(tmp_path: Path) -> None:
    path = tmp_path / "dangling.obo"
    path.write_text("format-version: 1.2\n\n[Term]\nid: GO:0000002\nname: a\nis_a: GO:0000003\n")
    with pytest.raises(DataError, match="GO:0000003"):
        read_obo(path)


def test_consistent_scores_raises_parents_to_their_best_descendant() -> None:
    # Columns: 0 root, 1 organelle (child of 0), 2 nucleus (child of 1 and 0), 3 unrelated.
    ancestors_index = [[], [0], [1, 0], []]
    probabilities = np.array(
        [
            [0.2, 0.3, 0.9, 0.4],  # parents below the nucleus are raised to 0.9
            [0.8, 0.1, 0.05, 0.7],  # root already highest stays; organelle stays above nucleus
        ]
    )
    result = consistent_scores(probabilities, ancestors_index)
    np.testing.assert_allclose(
        result,
        [
            [0.9, 0.9, 0.9, 0.4],
            [0.8, 0.1, 0.05, 0.7],
        ],
    )
    assert probabilities[0, 0] == 0.2  # input untouched


def test_consistent_scores_on_random_input_satisfies_parent_at_least_child(
    ontology: Ontology,
) -> None:
    labels = sorted(ontology.names)
    within = ontology.ancestors_within(labels)
    ancestors_index = [[labels.index(a) for a in within[label]] for label in labels]
    probabilities = np.random.default_rng(0).random((200, len(labels)))
    result = consistent_scores(probabilities, ancestors_index)
    assert np.all(result >= probabilities)
    for child, ancestors in enumerate(ancestors_index):
        for ancestor in ancestors:
            assert np.all(result[:, ancestor] >= result[:, child])


def test_consistent_scores_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="columns"):
        consistent_scores(np.zeros((2, 3)), [[], []])
