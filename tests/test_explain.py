"""`esmtune explain` and ``Predictor.explain`` / ``Predictor.attention``.

The behaviour that matters: on a task decided by one short motif at a random position, the
residues integrated gradients scores highest are the motif's; IG's scores add up to the change
in the output (completeness), through windows and LoRA too; rollout is a share of the pooled
representation, the same for every label; attention maps are per layer and head, rows summing
to 1; and the TSV, the plots and the errors are what the help promises. One small run is trained
for the module (about 20 s on 2 cores); the rest use untrained tiny models.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import tiny_model

from esmtune.cli import build_parser, main
from esmtune.config import LongSequences, Pooling, load_config
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import EsmtuneError
from esmtune.explain import (
    EXPLANATION_COLUMNS,
    Explainer,
    Explanation,
    torch_run,
    write_explanations,
)
from esmtune.explain_options import DEFAULT_STEPS, ExplainOptions, Method
from esmtune.model.classifier import SequenceClassifier
from esmtune.model.run_model import LoadedRun
from esmtune.predict import Predictor
from esmtune.tasks import task_from_state

MOTIF = "WWW"
# Every residue but the motif's, so that only the motif can tell the classes apart.
_BACKGROUND = "".join(r for r in "ACDEFGHIKLMNPQRSTVY" if r not in MOTIF)


def _motif_sequence(rng: random.Random, positive: bool) -> tuple[str, int | None]:
    """A random sequence of 20-34 residues; a positive one has the motif at a random offset."""
    residues = "".join(rng.choice(_BACKGROUND) for _ in range(rng.randint(20, 34)))
    if not positive:
        return residues, None
    offset = rng.randint(0, len(residues))
    return residues[:offset] + MOTIF + residues[offset:], offset


@pytest.fixture(scope="module")
def motif_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Binary: 'motif' when the sequence holds WWW, 'none' otherwise.

    Full fine-tuning of the tiny ESM2 with max pooling, which a local motif suits; the best
    epoch is chosen by validation loss, since MCC is perfect (and so chosen) too early.
    """
    from esmtune.fitting import fit

    rng = random.Random(7)

    def split(count: int) -> list[tuple[str, str]]:
        pairs = []
        for i in range(count):
            sequence, _ = _motif_sequence(rng, positive=i % 2 == 0)
            pairs.append((sequence, "motif" if i % 2 == 0 else "none"))
        return pairs

    return fit(
        split(96),
        validation=split(24),
        task="binary",
        model__name=str(tiny_model_dir),
        model__pooling="max",
        model__head_hidden=[32],
        model__head_dropout=0.0,
        finetune__mode="full",
        data__positive_label="motif",
        training__epochs=5,
        training__batch_size=16,
        training__learning_rate=0.003,
        training__warmup_ratio=0.0,
        training__early_stopping__metric="loss",
        output__dir=str(tmp_path_factory.mktemp("motif_runs")),
        output__name="motif",
    )


@pytest.fixture(scope="module")
def motif_predictor(motif_run: Path) -> Predictor:
    return Predictor.from_run(motif_run, device="cpu")


def _explainer(
    model: SequenceClassifier,
    model_dir: Path,
    max_length: int,
    long_sequences: LongSequences = LongSequences.WINDOW,
) -> Explainer:
    """An Explainer over an untrained tiny classifier with three labels."""
    from esmtune.model.backbone import esm2_tokenizer

    config = load_config(None, [f"model.name={model_dir}"])
    task = task_from_state({"task": "multiclass", "labels": ["a", "b", "c"]})
    loaded = LoadedRun(Path("tiny"), config, task, model, esm2_tokenizer())
    return Explainer(loaded, torch.device("cpu"), max_length, long_sequences, None, 1024)


# --- what the issue asks: the motif is what IG points at ------------------------------------


def test_integrated_gradients_put_the_top_scores_on_the_motif(
    motif_predictor: Predictor,
) -> None:
    rng = random.Random(2024)
    positives = [_motif_sequence(rng, positive=True) for _ in range(16)]
    records = [SequenceRecord(f"p{i}", s) for i, (s, _) in enumerate(positives)]
    explanations = motif_predictor.explain(records, label="motif", steps=16)
    assert [e.id for e in explanations] == [r.id for r in records]
    assert np.mean([e.output > 0.5 for e in explanations]) >= 0.8  # the model learned the task

    def on_motif(position: int, offset: int) -> bool:
        return offset < position <= offset + len(MOTIF)  # positions are 1-based

    pairs = list(zip(explanations, [offset for _, offset in positives], strict=True))
    top = [on_motif(e.top_positions(1)[0], offset) for e, offset in pairs]
    assert np.mean(top) >= 0.7, [(e.top_positions(3), offset) for e, offset in pairs]
    # And the motif is, on the whole, what the prediction rests on: most of the top three.
    top3 = [np.mean([on_motif(p, offset) for p in e.top_positions(3)]) for e, offset in pairs]
    assert np.mean(top3) >= 0.5


def test_with_no_label_each_sequence_explains_its_own_prediction(
    motif_predictor: Predictor,
) -> None:
    rng = random.Random(3)
    sequences = [_motif_sequence(rng, positive=i % 2 == 0)[0] for i in range(4)]
    predicted = [p["label"] for p in motif_predictor.predict(sequences)]
    explanations = motif_predictor.explain(sequences, steps=4)
    assert [e.label for e in explanations] == predicted
    probabilities = [p["probabilities"] for p in motif_predictor.predict(sequences)]
    for explanation, shares in zip(explanations, probabilities, strict=True):
        assert explanation.output == pytest.approx(shares[explanation.label], abs=1e-5)


# --- integrated gradients: completeness ---------------------------------------------------------


def _assert_complete(explanation: Explanation, tolerance: float = 2e-3) -> None:
    assert explanation.baseline_output is not None
    change = explanation.output - explanation.baseline_output
    assert float(np.nansum(explanation.scores)) == pytest.approx(change, abs=tolerance)


def test_ig_scores_add_up_to_the_change_in_output(motif_predictor: Predictor) -> None:
    rng = random.Random(5)
    sequence, _ = _motif_sequence(rng, positive=True)
    for label in ("motif", "none"):
        (explanation,) = motif_predictor.explain([sequence], label=label, steps=32)
        _assert_complete(explanation)
        assert explanation.scores.shape == (len(sequence),)
        assert explanation.scores.dtype == np.float32


def test_ig_is_complete_through_windows_and_lora(tiny_model_dir: Path) -> None:
    """A sequence read in four overlapping windows, by a plain and a LoRA-wrapped model."""
    from esmtune.model.classifier import build_model

    record = SequenceRecord("long", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQ")
    config = load_config(None, [f"model.name={tiny_model_dir}", "model.head_hidden=[8]"])
    torch.manual_seed(1)
    lora, _ = build_model(config, num_outputs=3)
    for model in (tiny_model(tiny_model_dir), lora.eval()):
        explainer = _explainer(model, tiny_model_dir, max_length=24)
        assert len(explainer._windows(record.sequence)) == 4
        (explanation,) = explainer.explain([record], ExplainOptions(label="c", steps=16))
        assert not np.isnan(explanation.scores).any()  # windows read every residue
        _assert_complete(explanation, tolerance=1e-4)


def test_a_cut_sequence_scores_nan_where_it_was_not_read(tiny_model_dir: Path) -> None:
    explainer = _explainer(
        tiny_model(tiny_model_dir), tiny_model_dir, 20, long_sequences=LongSequences.TRUNCATE
    )
    record = SequenceRecord("cut", "MKTAYIAKQRQISFVKSHFSRQLEERLGLI")
    (explanation,) = explainer.explain([record], ExplainOptions(steps=8))
    assert explanation.unread == 10 and np.isnan(explanation.scores[20:]).all()
    assert explanation.top_positions(30)[-10:] == list(range(21, 31))  # NaN ranks last
    table = io.StringIO()
    write_explanations([explanation], table)
    rows = list(csv.DictReader(io.StringIO(table.getvalue()), delimiter="\t"))
    assert [row["score"] for row in rows[20:]] == ["NaN"] * 10


# --- rollout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", list(Pooling))
def test_rollout_is_a_share_of_the_pooled_state_whatever_the_label(
    tiny_model_dir: Path, pooling: Pooling
) -> None:
    """Non-negative, at most 1 in all (<cls> and <eos> hold the rest), label-blind; and the
    same whether the sequence is read whole or in windows, up to how the windows mix."""
    record = SequenceRecord("s", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV")
    model = tiny_model(tiny_model_dir, pooling)
    for max_length in (40, 16):  # one window, then three
        explainer = _explainer(model, tiny_model_dir, max_length)
        first, second = (
            explainer.explain([record], ExplainOptions(label=label, method=Method.ROLLOUT))[0]
            for label in ("a", "b")
        )
        np.testing.assert_array_equal(first.scores, second.scores)
        assert first.baseline_output is None and first.method == "rollout"
        assert (first.scores >= 0).all()
        total = float(first.scores.sum())
        if pooling is Pooling.CLS:
            assert 0 < total < 1  # <cls> draws on itself too
        else:
            assert 0.5 < total <= 1 + 1e-5


# --- raw attention maps ----------------------------------------------------------------------


def test_attention_maps_are_per_layer_and_head_and_rows_sum_to_one(
    motif_predictor: Predictor,
) -> None:
    sequence = "MKTAYIAKQRQWWWISFVKSHFSRQ"
    before = motif_predictor.outputs([sequence])
    maps = motif_predictor.attention(sequence)
    assert maps.shape == (2, 4, len(sequence), len(sequence)) and maps.dtype == np.float32
    full = motif_predictor.attention(sequence, special_tokens=True)
    assert full.shape == (2, 4, len(sequence) + 2, len(sequence) + 2)
    np.testing.assert_allclose(full.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(full[:, :, 1:-1, 1:-1], maps)
    assert not np.allclose(full[0, 0], full[0, 1])  # heads differ
    # The eager switch was for that call only: the model predicts as before, with sdpa.
    assert motif_predictor.model.backbone_config._attn_implementation == "sdpa"
    np.testing.assert_allclose(motif_predictor.outputs([sequence]), before, atol=1e-6)


def test_attention_maps_of_a_lora_model(tiny_model_dir: Path) -> None:
    from esmtune.model.classifier import build_model

    config = load_config(None, [f"model.name={tiny_model_dir}", "model.head_hidden=[8]"])
    model, _ = build_model(config, num_outputs=3)  # LoRA, the default
    maps = _explainer(model.eval(), tiny_model_dir, 40).attention(SequenceRecord("s", "MKTAYIAK"))
    assert maps.shape == (2, 4, 8, 8)


# --- the TSV, the plots and the command --------------------------------------------------------


def test_the_table_has_a_row_per_residue_with_positions_from_one(
    motif_predictor: Predictor,
) -> None:
    sequences = {"first": "MKTAYIWWWAKQ", "second": "MDEDEEDSTGANQDEDE"}
    explanations = motif_predictor.explain(sequences, method="rollout")
    table = io.StringIO()
    write_explanations(explanations, table)
    rows = list(csv.reader(io.StringIO(table.getvalue()), delimiter="\t"))
    assert tuple(rows[0]) == EXPLANATION_COLUMNS
    assert rows[0][:4] == ["id", "position", "residue", "score"]
    body = rows[1:]
    assert len(body) == sum(len(s) for s in sequences.values())
    for name, sequence in sequences.items():
        mine = [row for row in body if row[0] == name]
        assert [int(row[1]) for row in mine] == list(range(1, len(sequence) + 1))
        assert "".join(row[2] for row in mine) == sequence
        assert all(row[4] == "rollout" and row[5] in ("motif", "none") for row in mine)
        scores = [float(row[3]) for row in mine]
        explanation = next(e for e in explanations if e.id == name)
        np.testing.assert_allclose(scores, explanation.scores, rtol=1e-5)


def test_the_command_writes_the_table_and_the_plots(
    motif_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">alpha\nMKTAYIWWWAKQRQ\n>beta\nMDEDEEDSTGANQ\n")
    table, figure = tmp_path / "scores.tsv", tmp_path / "tracks.png"
    argv = ["explain", str(motif_run), str(fasta), "--steps", "8", "-o", str(table)]
    assert main([*argv, "--plot", str(figure), "--device", "cpu"]) == 0
    assert "2 explanation(s) written" in capsys.readouterr().err
    rows = list(csv.DictReader(table.open(), delimiter="\t"))
    assert len(rows) == 14 + 13 and {row["method"] for row in rows} == {"ig"}
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Standard output, rollout, and a folder of one figure per sequence (an svg on request).
    folder = tmp_path / "tracks"
    argv = ["explain", str(motif_run), "--sequence", "MKTWWWAY", "--method", "rollout"]
    assert main([*argv, "--label", "none", "--plot", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "\t".join(EXPLANATION_COLUMNS)
    assert out.splitlines()[1].startswith("seq1\t1\tM\t") and out.endswith("rollout\tnone\n")
    assert [p.name for p in folder.iterdir()] == ["seq1.png"]
    vector = tmp_path / "tracks.svg"
    assert main([*argv, "--plot", str(vector)]) == 0
    assert "<svg" in vector.read_text()


def test_short_chains_are_lettered_and_long_ones_numbered(monkeypatch, tmp_path: Path) -> None:
    """The track's x axis: each residue under its bar up to 80 residues, positions beyond."""
    from esmtune import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure))
    short, long = "MKTAYIAKQR", "MKTAYIAKQR" * 12
    tracks = [("short", short, np.linspace(-1, 1, 10)), ("long", long, np.ones(120))]
    for track in tracks:
        plots.plot_residue_scores([track], tmp_path / "x.png", "title")
    lettered, numbered = (figure.axes[0] for figure in drawn)
    assert [label.get_text() for label in lettered.get_xticklabels()] == list(short)
    ticks = [label.get_text() for label in numbered.get_xticklabels()]
    assert 0 < len(ticks) < 20 and all(text.lstrip("−-").isdigit() for text in ticks)
    assert lettered.get_xlim() == (0.5, 10.5)


def test_the_options_come_from_the_explain_schema() -> None:
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    actions = {a.dest: a for a in commands.choices["explain"]._actions}
    assert actions["method"].choices == [method.value for method in Method]
    assert (
        actions["steps"].default == DEFAULT_STEPS and f"[{DEFAULT_STEPS}]" in actions["steps"].help
    )
    assert "runtime" not in actions and "precision" not in actions  # explaining runs torch, fp32


# --- errors a person can act on ----------------------------------------------------------------


def test_an_unknown_label_method_or_step_count_is_refused(motif_predictor: Predictor) -> None:
    with pytest.raises(EsmtuneError, match=r"label 'Motif' is not one of .*did you mean motif"):
        motif_predictor.explain(["MKTWWWAY"], label="Motif")
    with pytest.raises(EsmtuneError, match=r"(?s)method='shap'.*steps=0"):
        motif_predictor.explain(["MKTWWWAY"], method="shap", steps=0)
    with pytest.raises(EsmtuneError, match="attention maps cover one model input"):
        motif_predictor.attention("M" * (motif_predictor.max_length + 1))


def test_a_model_outside_torch_is_refused_with_what_to_do_instead(motif_run: Path) -> None:
    """An ONNX export predicts, but has neither gradients nor attention weights."""

    class OnnxLike:
        runtime = "onnx"

        def prepare_inference(self, device: object) -> torch.device:
            return torch.device("cpu")

    run = Predictor.from_run(motif_run, device="cpu").run
    exported = LoadedRun(
        Path("exports/motif-onnx"), run.config, run.task, OnnxLike(), run.tokenizer
    )
    predictor = Predictor(exported)  # type: ignore[arg-type]
    for call in (lambda: predictor.explain(["MKTAY"]), lambda: predictor.attention("MKTAY")):
        with pytest.raises(EsmtuneError, match=r"runs in onnx.*--format hf"):
            call()
    with pytest.raises(EsmtuneError, match="needs the model in torch"):
        torch_run(exported)  # type: ignore[arg-type]


def test_without_captum_ig_says_how_to_install_it(
    motif_predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import fails as if not installed
    with pytest.raises(EsmtuneError, match=r"pip install 'esmtune\[explain\]'"):
        motif_predictor.explain(["MKTWWWAY"])
    assert motif_predictor.explain(["MKTWWWAY"], method="rollout")  # rollout needs no Captum


def test_the_command_checks_the_plot_path_before_loading_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["explain", str(tmp_path / "no-run"), "--sequence", "MKTAY"]
    assert main([*argv, "--plot", str(tmp_path / "tracks.jpg")]) == 2
    assert "name a .png, .svg or .pdf file" in capsys.readouterr().err
    many = [word for i in range(21) for word in ("--sequence", f"MKTAY{'A' * i}")]
    assert main([*argv[:2], *many, "--plot", str(tmp_path / "all.png")]) == 2
    assert "too many tracks for one figure" in capsys.readouterr().err


# --- what each task explains -------------------------------------------------------------------


def test_each_task_says_which_output_is_which_label() -> None:
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    binary = task_from_state({"task": "binary", "labels": ["no", "yes"]})
    scores = binary.label_scores(logits[:, :1])
    assert scores.shape == (2, 2)
    np.testing.assert_allclose(scores.sum(dim=1).numpy(), 1.0)
    assert binary.decided_label(binary.outputs(logits[:, :1])[0]) == 1  # σ(0.5) ≥ 0.5
    multiclass = task_from_state({"task": "multiclass", "labels": ["x", "y"]})
    assert multiclass.decided_label(multiclass.outputs(logits)[1]) == 0
    multilabel = task_from_state({"task": "multilabel", "labels": ["x", "y"]})
    assert multilabel.decided_label(multilabel.outputs(logits)[0]) == 0
    regression = task_from_state(
        {"task": "regression", "labels": ["kd", "tm"], "target_mean": [1, 2], "target_std": [2, 1]}
    )
    np.testing.assert_allclose(regression.label_scores(logits).numpy()[0], [2.0, 1.0])
    assert regression.decided_label(regression.outputs(logits)[0]) == 0
