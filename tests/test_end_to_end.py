"""Train → evaluate → predict through the CLI on a tiny ESM2, offline."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
from tests.helpers import ROOT, readme_commands, tiny_overrides

from esmtune.cli import main

PROMISED = {
    "config.yaml",
    "labels.json",
    "manifest.json",
    "metrics.json",
    "data_check.txt",
    "train.log",
    "training_curves.png",
    "model/weights.safetensors",
    "model/best_validation_metrics.json",
    "model/backbone/config.json",
    "model/backbone/vocab.txt",
    "model/backbone/tokenizer_config.json",
}


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir: Path, learnable_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    args = ["train", *tiny_overrides(tiny_model_dir, learnable_data, out, "e2e")]
    args += ["finetune.mode=full", "training.keep_checkpoints=1"]
    assert main(args) == 0
    return out / "e2e"


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def test_run_directory_holds_exactly_the_promised_files(trained_run: Path) -> None:
    files = _files(trained_run)
    checkpoints = {f for f in files if f.startswith("checkpoints/")}
    tensorboard = {f for f in files if f.startswith("tensorboard/")}
    assert files - checkpoints - tensorboard == PROMISED
    assert tensorboard, "TensorBoard events are written"
    (checkpoint,) = {Path(f).parent for f in checkpoints}  # keep_checkpoints=1
    assert {Path(f).name for f in checkpoints} == {
        "trainable.safetensors", "optimizer.safetensors", "scheduler.safetensors",
        "rng-0.safetensors", "state.json", "files.json",
    }  # fmt: skip
    assert checkpoint.name == "epoch-0004-step-00000060"
    labels = json.loads((trained_run / "labels.json").read_text())
    assert labels["task"] == "multiclass"
    assert labels["labels"] == ["Acidic", "Basic", "Hydrophobic"]
    assert labels["weights"] is None  # no class weights unless asked for
    manifest = json.loads((trained_run / "manifest.json").read_text())
    assert {"torch", "transformers", "peft", "accelerate"} <= set(manifest["versions"])
    assert manifest["data"]["counts"]["train"] == {"Acidic": 40, "Basic": 40, "Hydrophobic": 40}


def test_training_learns_and_history_is_recorded(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert [entry["epoch"] for entry in metrics["history"]] == [1, 2, 3, 4]
    assert metrics["best_value"] == max(entry["macro_f1"] for entry in metrics["history"])
    assert metrics["best_value"] > 0.8  # chance is 1/3


def test_evaluate_beats_chance_and_writes_report(trained_run: Path, capsys) -> None:
    assert main(["evaluate", str(trained_run)]) == 0
    shown = capsys.readouterr().out
    assert "macro-F1" in shown and "Hydrophobic" in shown
    out = trained_run / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.8  # 3 balanced classes: chance 0.33
    assert metrics["n"] == 48
    assert sum(map(sum, metrics["confusion_matrix"])) == 48
    assert set(metrics["per_class"]) == {"Acidic", "Basic", "Hydrophobic"}
    assert 0.0 <= metrics["roc_auc_ovr"] <= 1.0 and metrics["mcc"] > 0.6
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 48 and {"id", "true_label", "predicted_label", "p_Basic"} <= set(rows[0])


def test_predict_from_fasta_sequence_and_stdin(
    trained_run: Path, tmp_path: Path, capsys, monkeypatch
):
    fasta = tmp_path / "new.fasta"
    fasta.write_text(">acid\nMDEDEEDDEEDSDEDEEDDE\nEDEDDE\n>base\nmkrkrrkkrkrrkkrkrrk*\n")
    assert (
        main(["predict", str(trained_run), str(fasta), "--sequence", "MLIVLFVMLIVLIVLWVLLF"]) == 0
    )
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out), delimiter="\t"))
    assert [row["id"] for row in table] == ["acid", "base", "seq1"]
    assert [row["label"] for row in table] == ["Acidic", "Basic", "Hydrophobic"]
    for row in table:
        total = sum(float(row[f"p_{label}"]) for label in ("Acidic", "Basic", "Hydrophobic"))
        assert total == pytest.approx(1.0, abs=1e-4)

    out = tmp_path / "pred.json"
    monkeypatch.setattr(sys, "stdin", io.StringIO(">x\nKRKRKRKRKRKRKRKRKR\n"))
    assert main(["predict", str(trained_run), "-", "--top-k", "2", "-o", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    assert result["id"] == "x" and result["label"] == "Basic"
    assert len(result["top_k"]) == 2 and result["top_k"][0][0] == "Basic"


def test_predictor_api_matches_cli_and_rejects_bad_residues(trained_run: Path) -> None:
    from esmtune import Predictor
    from esmtune.errors import DataError

    predictor = Predictor.from_run(trained_run, max_tokens=256)
    sequences = {"long": "MKRKRKRKRKRKRKRKRKRKRKRKRKR", "short": "MDEDE", "mid": "MLIVLFVMLIV"}
    results = predictor.predict(sequences, top_k=1)
    assert [r["id"] for r in results] == ["long", "short", "mid"]  # input order, not length order
    alone = predictor.predict([sequences["short"]])[0]
    assert alone["probabilities"] == pytest.approx(results[1]["probabilities"], abs=1e-5)
    with pytest.raises(DataError, match=r"record 'bad': invalid residue 'J' at position 3"):
        predictor.predict({"bad": "MKJKR"})


def test_existing_run_directory_is_never_overwritten(
    trained_run: Path, tiny_model_dir: Path, learnable_data: Path, capsys
) -> None:
    before = (trained_run / "model/weights.safetensors").read_bytes()
    args = ["train", *tiny_overrides(tiny_model_dir, learnable_data, trained_run.parent, "e2e")]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (trained_run / "model/weights.safetensors").read_bytes() == before


def test_readme_commands_parse() -> None:
    from esmtune.cli import build_parser

    commands = readme_commands()
    assert len(commands) >= 6
    for argv in commands:
        try:
            _, extra = build_parser().parse_known_args(argv)
            assert all("=" in e and not e.startswith("-") for e in extra), argv  # late overrides
        except SystemExit as exit:  # --help exits 0; an unknown option exits 2
            assert exit.code == 0, argv


@pytest.mark.end_to_end
@pytest.mark.export
def test_readme_export_and_predict_examples_run(
    trained_run: Path, tmp_path: Path, monkeypatch
) -> None:
    """The README's export commands, then its predict commands (on the run and on an export)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    commands = readme_commands()
    ran = []
    for command in ("export", "predict"):
        for argv in commands:
            # The demo run's commands and its exports'; others name runs and files the reader
            # makes first, and --interactive waits for a person.
            ours = argv[1] == "runs/demo" or argv[1].startswith("exports/")
            if argv[0] == command and ours and "--interactive" not in argv:
                argv = [str(trained_run) if a == "runs/demo" else a for a in argv]
                assert main(argv) == 0, argv
                ran.append(argv[0])
    assert ran.count("export") >= 2 and ran.count("predict") >= 3
    assert (tmp_path / "predictions.csv").is_file() and (tmp_path / "exported.tsv").is_file()


@pytest.mark.end_to_end
def test_readme_python_example_runs(trained_run: Path, capsys) -> None:
    import re

    text = (ROOT / "README.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    exec(snippet.replace('"runs/demo"', repr(str(trained_run))), {})
    assert capsys.readouterr().out.startswith("P1 ")


def test_predictor_returns_a_dataframe_with_one_row_per_sequence(trained_run: Path) -> None:
    from esmtune import Predictor

    predictor = Predictor.from_run(trained_run)
    sequences = {"a": "MDEDEEDSTGANQDEDE", "b": "MKRKRRKSTGANQKRKR"}
    frame = predictor.predict_frame(sequences)
    records = predictor.predict(sequences)
    assert list(frame["id"]) == ["a", "b"]
    assert list(frame["label"]) == [r["label"] for r in records]
    labels = ["Acidic", "Basic", "Hydrophobic"]
    assert list(frame.columns) == [
        "id", "label", "probability", *(f"p_{x}" for x in labels), "length", "truncated",
        "windows",
    ]  # fmt: skip
    assert frame[[f"p_{x}" for x in labels]].sum(axis=1).round(5).tolist() == [1.0, 1.0]
