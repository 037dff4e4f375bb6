"""`esmtune explain --position` and ``Predictor.explain(position=...)`` on per-residue runs.

The behaviour that matters: on residue classes that the residue two to the LEFT decides (and
values that the residue two to the RIGHT decides), integrated gradients for residue i put the
most weight on that neighbour; the scores add up to the change in that residue's output
(completeness); a chain longer than the model's context, explained at a residue, is explained by
the windows that reach that residue, exactly as the window holding it would be on its own; the
output explained is the one predict gives; rollout reads the residue's own row; the TSV and the
plot name the residue; and every misuse of --position says what to do. Two small runs are
trained for the module (about 15 and 6 s on 2 cores).
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import FLIP_LETTERS, tiny_model, tiny_overrides, write_flip

from esmtune.cli import build_parser, main
from esmtune.config import LongSequences, load_config
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import EsmtuneError
from esmtune.explain import (
    EXPLANATION_COLUMNS,
    RESIDUE_EXPLANATION_COLUMNS,
    Explainer,
    Explanation,
    plot_explanations,
    write_explanations,
)
from esmtune.explain_options import ExplainOptions
from esmtune.model.run_model import LoadedRun
from esmtune.predict import Predictor
from esmtune.tasks import task_from_state

# Shorter than the long chains below, so that they are read in windows (stride 16).
MAX_LENGTH = 32
ACIDIC, BASIC = "DE", "KR"


def class_from_left(sequence: str, i: int) -> str:
    """E after an acidic residue two to the left, H after a basic one, else C."""
    if i >= 2 and sequence[i - 2] in ACIDIC:
        return "E"
    if i >= 2 and sequence[i - 2] in BASIC:
        return "H"
    return "C"


def value_from_right(sequence: str, i: int) -> float:
    """The charge of the residue two to the right: +1 acidic, -1 basic, else (or none) 0."""
    if i + 2 >= len(sequence):
        return 0.0
    return 1.0 if sequence[i + 2] in ACIDIC else -1.0 if sequence[i + 2] in BASIC else 0.0


def _train(model_dir: Path, root: Path, rule, regression: bool, *settings: str) -> Path:
    data = write_flip(root / "data", {"train": 192, "validation": 24}, rule, regression)
    overrides = tiny_overrides(model_dir, data, root / "runs", "run")
    window = [f"data.max_length={MAX_LENGTH}", "data.long_sequences=window"]
    task = "residue_regression" if regression else "residue_classification"
    common = [f"task={task}", "finetune.mode=full", "training.early_stopping.metric=loss"]
    assert main(["train", *overrides, *window, *common, *settings]) == 0
    return root / "runs" / "run"


@pytest.fixture(scope="module")
def classes_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP head on every residue: 99.9% validation accuracy from epoch 8, and by epoch 12 it
    reads the neighbour cleanly enough for IG to find it in nearly every chain (at epoch 8 in
    two chains of three)."""
    root = tmp_path_factory.mktemp("classes_from_left")
    return _train(tiny_model_dir, root, class_from_left, False, "training.epochs=12")


@pytest.fixture(scope="module")
def values_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CNN head (kernel 3, twice: it reads 2 residues either side); R² > 0.99 by epoch 3."""
    root = tmp_path_factory.mktemp("values_from_right")
    settings = ["model.head=cnn", "model.head_kernel_size=3", "training.epochs=6"]
    return _train(tiny_model_dir, root, value_from_right, True, *settings)


@pytest.fixture(scope="module")
def classes(classes_run: Path) -> Predictor:
    return Predictor.from_run(classes_run, device="cpu")


@pytest.fixture(scope="module")
def values(values_run: Path) -> Predictor:
    return Predictor.from_run(values_run, device="cpu")


def _chain(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(FLIP_LETTERS) for _ in range(length))


def _charged_at(rng: random.Random, sequence: str, offset: int) -> int:
    """A random 0-based residue whose neighbour at ``offset`` is charged (decides its target)."""
    return rng.choice(
        [i for i in range(len(sequence)) if 0 <= i + offset < len(sequence)
         and sequence[i + offset] in ACIDIC + BASIC]
    )  # fmt: skip


# This confident model's output at a residue flips over a short stretch of IG's path (between
# 3% and 10% of the way), which 50 points follow loosely (measured: gaps up to 0.6); 256 hold the
# sums within 0.003 at every residue of a chain.
STEPS_FOR_SUMS = 256


def _assert_complete(explanation: Explanation, tolerance: float = 5e-3) -> None:
    assert explanation.baseline_output is not None and explanation.completeness_gap is not None
    change = explanation.output - explanation.baseline_output
    assert float(np.nansum(explanation.scores)) == pytest.approx(change, abs=tolerance)
    assert explanation.completeness_gap == pytest.approx(0, abs=tolerance)


# --- what the issue asks: IG at residue i points at the neighbour that decides it ---------------


def test_ig_at_a_residue_points_at_the_neighbour_its_class_comes_from(classes: Predictor) -> None:
    rng = random.Random(11)
    found = []
    for n in range(24):
        sequence = _chain(rng, 30)
        index = _charged_at(rng, sequence, -2)
        (explanation,) = classes.explain({f"c{n}": sequence}, position=index + 1, steps=16)
        assert explanation.position == index + 1 and explanation.residue == sequence[index]
        found.append((explanation, class_from_left(sequence, index), index - 1))  # 1-based i-2
    assert np.mean([e.label == truth for e, truth, _ in found]) >= 0.9  # the model learned it
    # Chance would put the neighbour first in 1 chain of 30; it is first in most, in the top
    # three in nearly all (measured: 23 and 24 of 24).
    first = [e.top_positions(1)[0] == neighbour for e, _, neighbour in found]
    assert np.mean(first) >= 0.75, [(e.top_positions(3), neighbour) for e, _, neighbour in found]
    assert np.mean([neighbour in e.top_positions(3) for e, _, neighbour in found]) >= 0.9
    # And over the chains, the residue two to the left holds the largest share of what moved
    # the output, well ahead of the next offset (the residue itself: 0.27 against 0.15).
    shares: dict[int, list[float]] = {}
    for explanation, _, neighbour in found:
        weight = np.abs(explanation.scores) / np.abs(explanation.scores).sum()
        for position, share in enumerate(weight, start=1):
            shares.setdefault(position - neighbour - 2, []).append(float(share))
    mean = sorted(((sum(v) / len(found), offset) for offset, v in shares.items()), reverse=True)
    (best, offset), (second, _) = mean[:2]
    assert offset == -2 and best >= 1.4 * second, mean[:3]


def test_ig_on_values_points_at_the_neighbour_to_the_right(values: Predictor) -> None:
    rng = random.Random(12)
    found = []
    for _ in range(16):
        sequence = _chain(rng, 30)
        index = _charged_at(rng, sequence, 2)
        (explanation,) = values.explain([sequence], position=index + 1, steps=16)
        found.append((explanation, value_from_right(sequence, index), index + 3))
    assert all(e.label == "value" for e, _, _ in found)
    assert np.mean([abs(e.output - truth) < 0.25 for e, truth, _ in found]) >= 0.9
    # For +1 and -1 alike the neighbour moved the value most (up or down): rank by size.
    top = [int(np.nanargmax(np.abs(e.scores))) + 1 == n for e, _, n in found]
    assert np.mean(top) >= 0.8
    for explanation, _, _ in found:
        _assert_complete(explanation)


# --- integrated gradients: completeness, labels and outputs ----------------------------------


def test_ig_is_complete_at_every_position_for_every_class(classes: Predictor) -> None:
    sequence = "KADSLEVGNRAKSDVLEGARNDKSLAEVRG"
    explanations = classes.explain([sequence], position="1-2,15,30", steps=STEPS_FOR_SUMS)
    assert [e.position for e in explanations] == [1, 2, 15, 30]
    for label in classes.labels:
        (explanation,) = classes.explain([sequence], label=label, position=15, steps=STEPS_FOR_SUMS)
        assert explanation.label == label
        explanations.append(explanation)
    for explanation in explanations:
        assert explanation.scores.shape == (len(sequence),)
        assert explanation.scores.dtype == np.float32
        _assert_complete(explanation)


def test_too_few_steps_for_the_sums_are_caught_and_named(
    classes: Predictor, classes_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gap is the integral's approximation: it shrinks as steps grow, and the command
    says when it is large, naming the worst residue and what to do."""
    sequence = "KADSLEVGNRAKSDVLEGARNDKSLAEVRG"
    gaps = [
        abs(classes.explain([sequence], position=30, steps=steps)[0].completeness_gap or 0)
        for steps in (16, 64, STEPS_FOR_SUMS)
    ]
    assert gaps[0] > 0.05 and gaps[2] < gaps[1] < gaps[0] and gaps[2] < 5e-3, gaps
    argv = ["explain", str(classes_run), "--sequence", sequence, "--position", "30"]
    assert main([*argv, "--steps", "16"]) == 0
    note = capsys.readouterr().err
    assert "scores of 1 explanation(s) miss output - baseline by more than 1%" in note
    assert "worst: seq1 at G30" in note and "raise --steps (e.g. 64)" in note
    assert main([*argv, "--steps", str(STEPS_FOR_SUMS)]) == 0
    assert "miss output" not in capsys.readouterr().err


def test_without_a_label_each_position_explains_what_predict_gave_it(classes: Predictor) -> None:
    sequences = {"first": "KADSLEVGNRAKSDVLEGARNDKSLAEVRG", "second": "EEKKDDRRAASSVV"}
    explanations = classes.explain(sequences, position=[3, 7, 12], steps=4)
    assert [(e.id, e.position) for e in explanations] == [
        (name, position) for name in sequences for position in (3, 7, 12)
    ]
    predicted = {p["id"]: p for p in classes.predict(sequences)}
    for explanation in explanations:
        result = predicted[explanation.id]
        assert explanation.label == result["prediction"][explanation.position - 1]
        shares = result["probabilities"][explanation.position - 1]
        column = result["classes"].index(explanation.label)
        assert explanation.output == pytest.approx(shares[column], abs=1e-5)


# --- long chains: the windows that reach the residue, and only they -----------------------------


def test_a_long_chain_at_a_residue_is_explained_as_the_window_holding_it(
    classes: Predictor,
) -> None:
    """Windows of 32 residues every 16: residue 5 is read in the first only, residue 70 in the
    last only, so either is explained as that window would be on its own; other residues cannot
    move it and score exactly 0."""
    sequence = _chain(random.Random(13), 80)
    windows = classes._explainer()._windows(sequence)
    assert [w.start for w in windows] == [0, 16, 32, 48]
    for position, start in ((5, 0), (70, 48)):
        (whole,) = classes.explain([sequence], position=position, steps=16)
        window = sequence[start : start + MAX_LENGTH]
        (alone,) = classes.explain([window], position=position - start, steps=16)
        assert (whole.label, whole.residue) == (alone.label, alone.residue)
        assert whole.output == pytest.approx(alone.output, abs=1e-5)
        span = slice(start, start + MAX_LENGTH)
        np.testing.assert_allclose(whole.scores[span], alone.scores, atol=1e-5)
        outside = np.delete(whole.scores, np.arange(start, start + MAX_LENGTH))
        assert (outside == 0).all() and whole.unread == 0


def test_a_residue_read_in_two_windows_is_explained_through_both(classes: Predictor) -> None:
    sequence = _chain(random.Random(14), 80)
    (explanation,) = classes.explain([sequence], position=40, steps=STEPS_FOR_SUMS)  # 2 windows
    moved = np.flatnonzero(explanation.scores) + 1
    assert moved.min() >= 17 and moved.max() <= 64
    assert (explanation.scores[16:31] != 0).any() and (explanation.scores[48:64] != 0).any()
    _assert_complete(explanation)
    shares = classes.outputs([sequence])[0][39]  # what predict stitches from both windows
    assert explanation.output == pytest.approx(shares[classes.labels.index(explanation.label)])


def test_a_cnn_head_takes_in_the_windows_its_kernel_reaches(values: Predictor) -> None:
    """The CNN head reads 2 residues either side, so residue 32 (the first window's last) also
    depends on the window at 32, which does not hold it: the output explained at every residue
    is the one predict gives (rollout computes it too, cheaply)."""
    sequence = _chain(random.Random(15), 80)
    predicted = values.outputs([sequence])[0][:, 0]
    explanations = values.explain([sequence], method="rollout", position="1-80")
    outputs = [e.output for e in explanations]
    np.testing.assert_allclose(outputs, predicted, atol=1e-5)
    (at_edge,) = values.explain([sequence], position=32, steps=STEPS_FOR_SUMS)
    assert (at_edge.scores[32:48] != 0).any()  # through the window at 32, via residues 33-34
    _assert_complete(at_edge)


# --- rollout -------------------------------------------------------------------------------------


def test_rollout_reads_the_explained_residues_own_row(classes: Predictor) -> None:
    """Against rollout computed here from the raw attention maps: row i of the product of each
    layer's head-averaged attention, mixed half and half with the identity."""
    sequence = "KADSLEVGNRAKSDVLEGARNDKSLAEVRG"
    maps = torch.from_numpy(classes.attention(sequence, special_tokens=True)).double()
    flow = torch.eye(len(sequence) + 2, dtype=torch.float64)
    for layer in maps:
        mixed = 0.5 * layer.mean(dim=0) + 0.5 * torch.eye(len(flow), dtype=torch.float64)
        flow = (mixed / mixed.sum(dim=-1, keepdim=True)) @ flow
    explanations = classes.explain([sequence], method="rollout", position=[4, 20])
    for explanation in explanations:
        expected = flow[explanation.position, 1:-1].numpy()
        np.testing.assert_allclose(explanation.scores, expected, atol=1e-5)
        assert explanation.baseline_output is None
    first, second = explanations
    assert not np.allclose(first.scores, second.scores)  # each residue's row, not a pooled one
    chosen = classes.explain([sequence], method="rollout", position=4, label="H")[0]
    np.testing.assert_array_equal(chosen.scores, first.scores)  # the same for every class


# --- the TSV, the plot and the command -----------------------------------------------------------


def test_the_command_writes_the_table_and_a_plot_per_position(
    classes_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sequence = "KADSLEVGNRAKSDVLEGARNDKSLAEVRG"
    table, folder = tmp_path / "why.tsv", tmp_path / "why"
    argv = ["explain", str(classes_run), "--sequence", sequence, "--steps", "4", "-o", str(table)]
    argv += ["--position", "5", "--position", "10-11", "--plot", str(folder), "--device", "cpu"]
    assert main(argv) == 0
    assert "3 explanation(s) written" in capsys.readouterr().err
    rows = list(csv.DictReader(table.open(), delimiter="\t"))
    assert tuple(rows[0]) == RESIDUE_EXPLANATION_COLUMNS
    assert len(rows) == 3 * len(sequence)
    for position in (5, 10, 11):
        mine = [row for row in rows if row["explained_position"] == str(position)]
        assert [int(row["position"]) for row in mine] == list(range(1, len(sequence) + 1))
        assert {row["explained_residue"] for row in mine} == {sequence[position - 1]}
        assert len({row["label"] for row in mine}) == 1
        assert mine[0]["label"] == class_from_left(sequence, position - 1)
    assert sorted(p.name for p in folder.iterdir()) == ["seq1-10.png", "seq1-11.png", "seq1-5.png"]


def test_the_plot_marks_the_explained_residue(monkeypatch, tmp_path: Path) -> None:
    from matplotlib.colors import to_hex

    from esmtune import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure))
    scores = np.linspace(-1, 1, 12, dtype=np.float32)
    at_seven = Explanation("s", "MKTAYIAKQRQI", "H", "ig", scores, 0.9, 0.1, position=7)
    plain = Explanation("t", "MKTAYIAKQRQI", "a", "ig", scores, 0.5, 0.2)
    plot_explanations([at_seven, plain], tmp_path / "both.png")
    (figure,) = drawn
    marked, unmarked = figure.axes
    assert marked.get_title(loc="left").split() == ["s", "A7", "H:", "0.9"]
    assert "marked residue" in figure.get_suptitle()

    def marks(axes) -> list[float]:
        triangles = [line.get_xdata()[0] for line in axes.lines if line.get_marker() == "v"]
        bands = [p.get_x() + p.get_width() / 2 for p in axes.patches
                 if to_hex(p.get_facecolor()) == "#fdd84b"]  # fmt: skip
        return [*triangles, *bands]

    assert marks(marked) == [7, 7] and marks(unmarked) == []


def test_the_table_of_a_sequence_level_run_keeps_its_columns() -> None:
    plain = Explanation("s", "MKT", "a", "ig", np.zeros(3, dtype=np.float32), 0.5, 0.4)
    table = io.StringIO()
    write_explanations([plain], table)
    assert table.getvalue().splitlines()[0].split("\t") == list(EXPLANATION_COLUMNS)


def test_position_is_an_option_of_the_command() -> None:
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    actions = {a.dest: a for a in commands.choices["explain"]._actions}
    position = actions["position"]
    assert position.metavar == "N" and position.default is None
    assert "10-20" in position.help and "per-residue" in position.help


# --- errors a person can act on -------------------------------------------------------------------


def test_a_per_residue_run_without_a_position_says_how_to_choose_one(
    classes: Predictor, classes_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(EsmtuneError, match=r"predicts each residue: choose .*--position N"):
        classes.explain(["KADSLEVGNR"])
    assert main(["explain", str(classes_run), "--sequence", "KADSLEVGNR"]) == 2
    error = capsys.readouterr().err
    assert "--position N (Python: position=N), numbered from 1" in error
    assert "--position 10 --position 42, a list 10,42 or a range 10-20" in error


def test_positions_beyond_a_sequence_are_refused_naming_each(
    classes: Predictor, classes_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = {"short": "KADSLEVGNR", "long": "KADSLEVGNRAKSDV", "shorter": "KADSL"}
    with pytest.raises(EsmtuneError) as caught:
        classes.explain(records, position="8-12")
    message = str(caught.value)
    assert message.startswith("2 sequence(s) cannot be explained at the positions asked:")
    assert (
        "short has 10 residues: position(s) 11, 12 are beyond it; choose positions from 1 to 10"
        in message
    )
    assert "shorter has 5 residues: position(s) 8, 9, 10, 11, 12 are beyond it" in message
    assert "long " not in message
    argv = ["explain", str(classes_run), "--sequence", "KADSL"]
    assert main([*argv, "--position", "6"]) == 2
    assert "seq1 has 5 residues: position(s) 6 are beyond it" in capsys.readouterr().err
    for bad, said in [("0", "residues are numbered from 1"), ("x", "'x' is not a position"),
                      ("9-3", "range 9-3 runs backwards; write 3-9")]:  # fmt: skip
        assert main([*argv, "--position", bad]) == 2  # before the model loads
        assert said in capsys.readouterr().err


def test_a_position_a_cut_chain_did_not_read_is_refused(classes_run: Path) -> None:
    cut = Predictor.from_run(classes_run, device="cpu", long_sequences="truncate")
    sequence = _chain(random.Random(16), 50)
    with pytest.raises(EsmtuneError, match=r"position\(s\) 33, 40, 41 were not read .*"
                       r"truncate reads residues 1-32 of 50.*--long-sequences window"):  # fmt: skip
        cut.explain([sequence], position="31-33,40-41")
    (explained,) = cut.explain([sequence], position=31, steps=4)
    assert explained.unread == 18 and np.isnan(explained.scores[32:]).all()
    assert not np.isnan(explained.scores[:32]).any()


def test_a_sequence_level_run_refuses_a_position(tiny_model_dir: Path) -> None:
    from esmtune.model.backbone import esm2_tokenizer

    config = load_config(None, [f"model.name={tiny_model_dir}"])
    task = task_from_state({"task": "multiclass", "labels": ["a", "b", "c"]})
    loaded = LoadedRun(Path("tiny"), config, task, tiny_model(tiny_model_dir), esm2_tokenizer())
    explainer = Explainer(loaded, torch.device("cpu"), 40, LongSequences.WINDOW, None, 1024)
    record = SequenceRecord("s", "MKTAYIAKQR")
    with pytest.raises(EsmtuneError, match=r"this multiclass run makes one prediction per "
                       r"sequence, explained as a whole: leave the position out"):  # fmt: skip
        explainer.explain([record], ExplainOptions(position=[3]))
    assert explainer.explain([record], ExplainOptions(steps=4))[0].position is None
