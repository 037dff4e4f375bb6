"""The command table: each command is a function adding its options, next to its handler.

A command's help is its handler's docstring (the first line in ``esmtune --help``, the rest in
``esmtune COMMAND --help``). Options come from the schemas that define them (data options from the
training config, predict's from PredictOptions, serve's from ServeSettings), choices from their
enums, and each ``[default]`` from the value the option really defaults to, so no option's meaning
is written twice. Heavy libraries (torch, transformers) are imported inside the handlers, so
``--help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from esmtune.config import (
    BASELINE_WINDOW,
    DataConfig,
    Pooling,
    Task,
    TrainConfig,
    describe_fields,
    field_description,
    length_percentile,
)
from esmtune.data.layout import SPLITS
from esmtune.data.split_options import SplitOptions
from esmtune.errors import EsmtuneError
from esmtune.evaluate_options import EvaluateOptions
from esmtune.explain_options import PLOT_SUFFIXES, ExplainOptions, one_figure
from esmtune.export.names import AUTO, RUNTIMES, FormatName
from esmtune.plan import PlanOptions
from esmtune.predict_options import PredictOptions
from esmtune.search_space import TuneOptions
from esmtune.serve import ServeSettings

if TYPE_CHECKING:
    from esmtune.predict import Predictor

__all__ = ["build_parser", "main"]

_Handler = Callable[[argparse.Namespace], int]
_METAVARS = {str: "NAME", Path: "FILE", int: "N", float: "N"}


def _add(command: Any, *names: str, help: str, default: Any = None, **options: Any) -> None:
    """``add_argument`` whose help ends with the default the option really has, if not shown yet."""
    if default is not None and default is not False and f"[{default}]" not in help:
        help = f"{help} [{default}]"
    command.add_argument(*names, help=help, default=default, **options)


def _kind(annotation: Any) -> dict[str, Any]:
    """The choices, type or action of an option setting a schema field (``X | None`` as X)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": typing.get_args(annotation)}
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return {"choices": [member.value for member in annotation]}
    if annotation is bool:
        return {"action": "store_true"}
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return {"action": "append", "metavar": _METAVARS.get(item, "NAME")}
    return {"type": annotation, "metavar": _METAVARS[annotation]}


def _add_fields(command: Any, model: type[BaseModel], names: Iterable[str]) -> None:
    """An option per field of ``model``: its name, type, choices, default and help."""
    for name in names:
        spec = model.model_fields[name]
        default = spec.default.value if isinstance(spec.default, StrEnum) else spec.default
        option = "--" + name.replace("_", "-")
        help = field_description(model, name)
        _add(command, option, default=default, help=help, **_kind(spec.annotation))


# --- train -----------------------------------------------------------------------------------

_TRAIN_EPILOG_HEAD = """\
Every config key can be overridden after the options as key=value (values are YAML):
  esmtune train --config configs/train.yaml training.epochs=3 model.pooling=attention

Config keys (section.key: meaning [default]):
"""


def _train_options(command: argparse.ArgumentParser) -> None:
    rows = describe_fields()
    width = max(len(key) for key, _ in rows)
    keys = "\n".join(f"  {key.ljust(width)}  {text}" for key, text in rows)
    command.epilog = _TRAIN_EPILOG_HEAD + keys
    command.formatter_class = argparse.RawDescriptionHelpFormatter  # the key table is aligned
    command.add_argument("--config", type=Path, help="YAML config file (e.g. configs/train.yaml)")
    command.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue an interrupted run from its newest intact checkpoint, with its saved "
        "config (a run stopped before its first checkpoint starts afresh in place; a finished "
        "run is reported and left unchanged)",
    )
    command.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def _cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune a model (checks the data first).

    Check the data, fine-tune ESM2 and save the best model in a run directory.
    Run under `accelerate launch` for mixed precision or several GPUs/processes.
    """
    from esmtune.config import load_config

    if args.resume is not None:
        if args.config is not None or args.overrides:
            raise EsmtuneError(
                "--resume continues a run with the config saved in it; drop --config and overrides"
            )
        config = load_config(args.resume / "config.yaml")
    else:
        config = load_config(args.config, args.overrides)
    from esmtune.train import train  # torch loads only once the config is known to be valid

    train(config, resume=args.resume)
    return 0


# --- tune ------------------------------------------------------------------------------------


def _tune_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", type=Path, help="base YAML config of every trial")
    command.add_argument(
        "--search",
        type=Path,
        required=True,
        metavar="FILE",
        help="YAML search space over config keys (e.g. configs/search.yaml)",
    )
    _add_fields(command, TuneOptions, list(TuneOptions.model_fields))
    command.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def _cmd_tune(args: argparse.Namespace) -> int:
    """Search hyperparameters with Optuna (TPE, median pruning).

    Train a trial run per sampled configuration into <output.dir>/<study>/trial-NNN, pruning poor
    trials after an epoch; the study (study.db) resumes when run again and can be shared by
    several processes. Writes leaderboard.csv, best_config.yaml and Optuna's plots there.
    """
    options = TuneOptions.checked(
        **{name: getattr(args, name) for name in TuneOptions.model_fields}
    )
    from esmtune.tune import tune  # torch and optuna load only when a search runs

    result = tune(args.config, args.search, options, args.overrides)
    print(result.table)
    if result.best_trial is None:
        print(f"no trial completed yet; the study is in {result.folder}")
    else:
        print(
            f"best: trial {result.best_trial} ({result.best_value:.4f}); train it with "
            f"esmtune train --config {result.folder / 'best_config.yaml'}"
        )
    return 0


# --- data check and baseline: options that set config keys ------------------------------------

# (option, config key) of `data check` and `baseline`; type, choices, help and default are the
# key's own, from the schema, and the option's value overrides the key.
_DATA_OPTIONS = (
    ("--task", "task"),
    ("--target-column", "data.target_columns"),
    ("--id-column", "data.id_column"),
    ("--sequence-column", "data.sequence_column"),
    ("--split-column", "data.split_column"),
    ("--ontology", "data.ontology"),
    ("--embeddings", "data.embeddings"),
)
_DATA_CHECK_OPTIONS = (
    ("--max-length", "data.max_length"),
    ("--fail-on-leakage", "data.fail_on_leakage"),
    ("--max-identity", "data.max_identity"),
    ("--drop-similar", "data.drop_similar"),
    ("--drop-conflicts", "data.drop_conflicts"),
    ("--drop-duplicates", "data.drop_duplicates"),
)


def _max_length(text: str) -> int | str:
    """``--max-length``: residues (``500``) or a percentile of the training lengths (``p95``)."""
    if text.strip().isdigit():
        return int(text)
    if length_percentile(text) is not None:
        return text.strip()
    raise argparse.ArgumentTypeError(f"'{text}': give residues (e.g. 500) or a percentile (p95)")


def _add_config_option(command: Any, option: str, key: str, helps: dict[str, str]) -> None:
    """An option that sets one config key, read from its schema field; unset, it changes nothing."""
    section, _, name = key.rpartition(".")
    model = TrainConfig.model_fields[section].annotation if section else TrainConfig
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{key}: '{section}' is not a section of the config")
    options = _kind(model.model_fields[name].annotation)
    if key == "data.max_length":  # a number, or a percentile of the training lengths
        options = {"type": _max_length, "metavar": "N|pNN"}
    repeatable = "(repeatable) " if options.get("action") == "append" else ""
    command.add_argument(option, dest=name, default=None, help=repeatable + helps[key], **options)


def _add_data_options(
    command: argparse.ArgumentParser, config_options: tuple[tuple[str, str], ...]
) -> None:
    """Where the data is and how to read it: a config, and options over its task and data keys."""
    helps = dict(describe_fields())
    settings = command.add_argument_group(
        "data settings",
        "Each sets the config key it is named after (PATH: data.path, --id-column: "
        "data.id_column), over --config; [default: ...] is the value when neither sets it.",
    )
    # Positionals are read in the order they are added: PATH, then the overrides.
    settings.add_argument("path", type=Path, nargs="?", metavar="PATH", help=helps["data.path"])
    command.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="other config keys, e.g. data.max_length=500",
    )
    command.add_argument(
        "--config", type=Path, help="read task and data settings from this training config"
    )
    for option, key in config_options:
        _add_config_option(settings, option, key, helps)


def _data_config(args: argparse.Namespace) -> tuple[Task, DataConfig]:
    """The task and data section that `data check` and `baseline` read, from a config and flags."""
    from esmtune.config import load_config

    overrides = list(args.overrides)
    if args.path is not None and "=" in str(args.path) and not args.path.exists():
        overrides.insert(0, str(args.path))  # `--config FILE KEY=VALUE`: no PATH was given
        args.path = None
    flags = {"data.path": args.path} | {
        key: getattr(args, key.rpartition(".")[2], None)
        for _, key in (*_DATA_OPTIONS, *_DATA_CHECK_OPTIONS)
    }
    for key, value in flags.items():
        if value is not None:
            text = str(value) if isinstance(value, Path) else value
            overrides.append(f"{key}={json.dumps(text)}")
    config = load_config(args.config, overrides)
    return config.task, config.data


def _data_check_options(command: argparse.ArgumentParser) -> None:
    _add_data_options(command, (*_DATA_OPTIONS, *_DATA_CHECK_OPTIONS))
    command.add_argument("--require-test", action="store_true", help="fail when test/ is missing")
    command.add_argument(
        "--leakage-out",
        type=Path,
        metavar="FILE",
        help="write each validation and test sequence's nearest training sequence to this TSV "
        "(id, split, nearest_train_id, identity, coverage; empty when nothing aligns)",
    )


def _cmd_data_check(args: argparse.Namespace) -> int:
    """Validate a dataset and print its statistics.

    Read a dataset the way training will (per-label FASTA folders, CSV/TSV/Parquet tables or
    FASTA with key=value headers; per-residue tasks: FLIP's sequences.fasta + labels.fasta +
    mask.fasta, biotrainer's TARGET=/SET=/MASK= headers) and print sequences per label and split
    (regression: target statistics; per-residue tasks: residues per class or value statistics,
    and masked residues) and lengths, with how many sequences exceed --max-length and how many
    records the --drop-* options dropped. With MMseqs2 installed, each validation and test
    sequence's highest identity to any training sequence, counted in identity bins with the
    closest examples (leakage by identity; --max-identity makes it fatal). Exit with status 2
    and every problem listed (file, line, record, fix) when the data cannot be trained on.
    """
    from esmtune.data.check import check_dataset

    task, data = _data_config(args)
    report = check_dataset(data, task, require_test=args.require_test, identity=True)
    print(f"{task.value} data, {report.layout}")
    print(report.table())
    if report.leakage is not None:
        print("\n".join(report.leakage.report_lines()))
        if args.leakage_out is not None:
            report.leakage.write_file(args.leakage_out)
            print(f"nearest training sequence of each: {args.leakage_out}")
    elif args.leakage_out is not None:
        print(f"note: --leakage-out {args.leakage_out}: not written, nothing was measured")
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.notes:
        print(f"note: {line}")
    report.raise_if_errors()
    from esmtune.tasks import task_class

    noun = task_class(task).target_noun
    print(f"OK: {data.path} can be trained on ({len(report.labels)} {noun})")
    return 0


# data split reads a dataset as training does; ontology and embeddings play no part in it.
_DATA_SPLIT_OPTIONS = tuple(
    (option, key)
    for option, key in _DATA_OPTIONS
    if key not in ("data.ontology", "data.embeddings")
)


def _data_split_options(command: argparse.ArgumentParser) -> None:
    _add_data_options(command, _DATA_SPLIT_OPTIONS)
    command.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="new or empty folder for the split dataset (in the layout read), clusters.tsv, "
        "summary.txt and summary.json",
    )
    split = SplitOptions.model_fields
    _add_fields(command, SplitOptions, [name for name in split if name != "fractions"])
    command.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        metavar=("TRAIN", "VALIDATION", "TEST"),
        help=field_description(SplitOptions, "fractions"),
    )


def _cmd_data_split(args: argparse.Namespace) -> int:
    """Split a dataset by homology (MMseqs2 clusters).

    Cluster every sequence with MMseqs2 (easy-cluster at --identity over --coverage of both
    sequences) and place whole clusters in train, validation and test, largest first, so that
    sizes meet --fractions and each split's label shares (classification tasks) come as close
    to the whole dataset's as clusters allow. Every placement is checked with easy-search, as
    the data check measures leakage: clusters still within --identity across splits are merged
    and placed again, so no validation or test sequence is left within --identity of a training
    sequence. Reads every layout training reads, and data not split yet (a folder of
    <Label>.fasta files, a table without a split column, FASTA headers without split=), and
    writes the same layout to --out with clusters.tsv (id, cluster, group, split) and a summary
    of sizes and label shares against their targets (summary.txt, summary.json). Needs MMseqs2:
    apt install mmseqs2, conda install -c bioconda mmseqs2, or brew install mmseqs2.
    """
    from esmtune.data.split import split_dataset

    task, data = _data_config(args)
    given = {name: getattr(args, name) for name in SplitOptions.model_fields}
    options = SplitOptions.checked(**{k: v for k, v in given.items() if v is not None})
    result = split_dataset(data, task, options, args.out)
    print(result.text)
    return 0


def _baseline_options(command: argparse.ArgumentParser) -> None:
    _add_data_options(command, _DATA_OPTIONS)
    # The model is fitted on the first split (train) and scored on one of the others.
    _add(command, "--split", default="test", choices=SPLITS[1:], help="split to score")
    command.add_argument(
        "--window",
        type=int,
        metavar="N",
        help="per-residue tasks: residues in the one-hot window centred on each residue, an odd "
        f"number (1: the residue alone) [{BASELINE_WINDOW}]",
    )
    command.add_argument(
        "--embed-with",
        metavar="MODEL",
        help="also fit the linear model on mean-pooled embeddings of this ESM2 model (hub id, "
        "folder or run), as --embeddings does with a file",
    )


def _cmd_baseline(args: argparse.Namespace) -> int:
    """Score a linear baseline on a dataset.

    A linear model on amino-acid + dipeptide composition (logistic regression; ridge for
    regression), fitted on train and scored on a split with the task's metrics, beside a trivial
    predictor (commonest label, label frequencies or the train mean): the numbers a fine-tuned
    model has to beat. Per-residue tasks: the same models on the one-hot encoded window of
    --window residues around each residue, fitted on train's unmasked residues (a seeded sample
    when train has very many, said in a note) and scored on every unmasked residue, beside the
    commonest class or the train mean. With --embeddings FILE or --embed-with MODEL, the same
    linear model on embeddings too: whether a network on top of them is needed at all.
    """
    from esmtune.baseline import embedding_baseline, task_baseline

    task, data = _data_config(args)
    result = task_baseline(data, task, args.split, args.window)

    def scores(metrics: dict) -> str:
        return ", ".join(
            f"{name} {'n/a' if metrics[name] is None else format(metrics[name], '.3f')}"
            for name in result["headline"]
        )

    where = result["where"]
    print(
        f"{result['name']} ({result['model_name']} on {result['features']}), {where}: "
        f"{scores(result['model'])}"
    )
    if data.embeddings is not None:
        embedded = embedding_baseline(data, task, args.split)
        source = f"embeddings in {data.embeddings}"
        print(f"embedding baseline ({embedded['model_name']} on {source}), {where}: "
              f"{scores(embedded['model'])}")  # fmt: skip
    if args.embed_with is not None:
        embedded = embedding_baseline(data, task, args.split, _embedder(args.embed_with))
        source = f"mean-pooled embeddings of {args.embed_with}"
        print(f"embedding baseline ({embedded['model_name']} on {source}), {where}: "
              f"{scores(embedded['model'])}")  # fmt: skip
    print(f"{result['trivial_name']}: {scores(result['trivial'])}")
    for line in result["notes"]:
        print(f"note: {line}")
    return 0


def _embedder(model: str) -> Callable[[list[Any]], Any]:
    """Mean-pooled embeddings of records with ``model``, as numpy (for the baseline)."""
    from esmtune.embeddings import embed_records, load_embedder

    embedder, tokenizer, max_length = load_embedder(model)

    def embed(records: list[Any]) -> Any:
        pooled = embed_records(embedder, tokenizer, records, "mean", max_length, progress=False)
        assert not isinstance(pooled, list)  # (per-residue embeddings are a list)
        return pooled.numpy()

    return embed


# --- evaluate --------------------------------------------------------------------------------


def _evaluate_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("run", type=Path, metavar="RUN", help="run directory")
    command.add_argument(
        "--data",
        type=Path,
        metavar="PATH",
        help="dataset, read with the run's column settings [the one the run trained on]",
    )
    _add(command, "--split", default="test", choices=SPLITS, help="split")
    command.add_argument(
        "--embeddings",
        type=Path,
        metavar="FILE",
        help="a run trained on precomputed embeddings: the file with the split's embeddings "
        "[the run's data.embeddings]",
    )
    _add_fields(command, PredictOptions, ["max_tokens"])
    _add_fields(command, EvaluateOptions, list(EvaluateOptions.model_fields))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a run on a labelled split.

    Every metric of the run's task on a split, with its saved thresholds (multiclass: accuracy,
    macro/weighted F1, MCC, ROC-AUC, per class; binary: + precision, recall, F1, PR-AUC;
    multilabel: Fmax and coverage, micro/macro F1 and AP, per label; regression: Spearman,
    Pearson, R², RMSE, MAE) and plots (confusion matrix, ROC/PR curves or predicted-vs-true
    scatter), written to RUN/eval/SPLIT/ with predictions.csv. Beside the headline metrics:
    95% bootstrap intervals over proteins, and the task's baseline fitted on the run's own
    train split and scored on the same proteins, with the interval of model - baseline.
    """
    from esmtune.evaluate import evaluate_run, format_report
    from esmtune.processes import Processes

    options = EvaluateOptions.checked(
        **{name: getattr(args, name) for name in EvaluateOptions.model_fields}
    )
    metrics, _, written = evaluate_run(
        args.run, args.data, args.split, args.max_tokens, embeddings=args.embeddings,
        options=options,
    )  # fmt: skip
    if not Processes.current().is_main:  # (under accelerate launch the main process reports)
        return 0
    print(format_report(metrics))
    print(f"\nwritten: {', '.join(str(path) for path in written)}")
    return 0


# --- predict and embed: reading sequences, running the model ---------------------------------


def _add_sequence_inputs(command: argparse.ArgumentParser) -> None:
    """Where `predict` and `embed` read sequences from."""
    command.add_argument(
        "inputs", nargs="*", type=Path, metavar="FASTA", help="FASTA files ('-' = standard input)"
    )
    command.add_argument(
        "--sequence", action="append", metavar="SEQ", help="a raw sequence (repeatable)"
    )


def _read_inputs(args: argparse.Namespace, verb: str = "predict") -> list:
    from esmtune.data.fasta import SequenceRecord, parse_fasta, read_fasta

    records: list[SequenceRecord] = []
    if _launched() and ("-" in map(str, args.inputs) or not (args.inputs or args.sequence)):
        raise EsmtuneError(
            f"under several processes, give the sequences to {verb} as FASTA files or "
            "--sequence: standard input reaches one process only"
        )
    for path in args.inputs:
        if str(path) == "-":
            records += list(parse_fasta(sys.stdin, "<stdin>"))
        else:
            records += read_fasta(path)
    records += [SequenceRecord(f"seq{i + 1}", s) for i, s in enumerate(args.sequence or [])]
    if not args.inputs and not args.sequence and not sys.stdin.isatty():
        records += list(parse_fasta(sys.stdin, "<stdin>"))
    if not records:
        raise EsmtuneError(
            f"nothing to {verb}: give FASTA files, --sequence SEQ, or FASTA on standard input"
        )
    return records


def _launched() -> bool:
    """Whether `accelerate launch` started this process among several."""
    from esmtune.processes import Processes

    return Processes.current().count > 1


def _add_runtime_option(command: argparse.ArgumentParser) -> None:
    """``--runtime`` of `predict` and `serve`: PredictOptions' field, with the runtimes' names."""
    default = PredictOptions.model_fields["runtime"].default
    help = field_description(PredictOptions, "runtime")
    runtimes = (AUTO, *(runtime.value for runtime in RUNTIMES))
    _add(command, "--runtime", choices=runtimes, default=default, help=help)


# How `predict` and `embed` run the model (embed has no runtime: it runs torch).
_INFERENCE_OPTIONS = [name for name in PredictOptions.model_fields if name != "runtime"]
# embed reads sequences with the model it is given; embed_with is for a head on embeddings.
_EMBED_OPTIONS = [name for name in _INFERENCE_OPTIONS if name != "embed_with"]


# Prediction formats and the --output suffix that selects each (write_predictions writes them).
_PREDICTION_FORMATS = {"tsv": ".tsv", "csv": ".csv", "json": ".json", "text": ".txt"}
_DEFAULT_PREDICTION_FORMAT = "tsv"


def _predict_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "run", type=Path, metavar="RUN", help="run directory, or a folder of `esmtune export`"
    )
    _add_sequence_inputs(command)
    command.add_argument(
        "--embeddings",
        type=Path,
        metavar="FILE",
        help="a run trained on precomputed embeddings (data.embeddings): predict every id of "
        "this .h5/.npz/.safetensors file instead of reading sequences",
    )
    _add_runtime_option(command)
    command.add_argument(
        "--top-k",
        type=int,
        help="rank only the k most probable labels [multiclass: all; multilabel: 5]",
    )
    command.add_argument(
        "--output",
        "-o",
        type=Path,
        help=f"write to FILE; format from {'/'.join(_PREDICTION_FORMATS.values())}",
    )
    command.add_argument(
        "--format",
        choices=list(_PREDICTION_FORMATS),
        help="output format; text is for reading, with probability bars "
        f"[{_DEFAULT_PREDICTION_FORMAT}, or from --output]",
    )
    command.add_argument(
        "--interactive",
        "-i",
        action="store_true",
        help="load the model once, then answer each sequence entered at a prompt, as text (one "
        "raw sequence per line, or FASTA ended by an empty line); an empty line or Ctrl-D quits",
    )
    _add_fields(command, PredictOptions, _INFERENCE_OPTIONS)


def _cmd_predict(args: argparse.Namespace) -> int:
    """Predict labels for new sequences.

    Predictions of a run (or of its export: hf in torch, onnx in onnxruntime) for each sequence,
    from FASTA files, --sequence or standard input; TSV on standard output unless --output is
    given. Per task: the label and class probabilities (multiclass), the label at the tuned
    threshold and P(positive) (binary), every label above its threshold and the top-k ranked
    labels with names (multilabel), the value of each target (regression). With --interactive,
    a prompt answers sequences one at a time, as text, with the model loaded once.
    """
    from esmtune.predict import Predictor, write_predictions

    if args.interactive:
        if args.embeddings is not None:
            raise EsmtuneError("--interactive reads sequences at its prompt: drop --embeddings")
        return _predict_interactively(args)
    options = {name: getattr(args, name) for name in PredictOptions.model_fields}
    if args.embeddings is not None:
        if args.inputs or args.sequence:
            raise EsmtuneError("give sequences or --embeddings, not both")
        predictor = Predictor.load(args.run, **options)
        results = predictor.predict_embeddings(args.embeddings, top_k=args.top_k)
    else:
        records = _read_inputs(args)
        predictor = Predictor.load(args.run, **options)
        results = predictor.predict(records, top_k=args.top_k, progress=len(records) > 100)
    if not predictor.processes.is_main:  # (under accelerate launch the main process writes)
        return 0
    if note := _long_sequence_note(results, predictor):
        print(note, file=sys.stderr)
    fmt = args.format
    if args.output is not None:
        by_suffix = {suffix: name for name, suffix in _PREDICTION_FORMATS.items()}
        fmt = fmt or by_suffix.get(args.output.suffix.lower(), _DEFAULT_PREDICTION_FORMAT)
        with args.output.open("w", newline="") as handle:
            write_predictions(results, predictor.task, fmt, handle)
        print(f"{len(results)} prediction(s) written to {args.output}", file=sys.stderr)
    else:
        write_predictions(results, predictor.task, fmt or _DEFAULT_PREDICTION_FORMAT, sys.stdout)
    return 0


def _long_sequence_note(results: list[dict[str, Any]], predictor: Predictor) -> str | None:
    """What happened to sequences longer than the model's inputs, if there were any."""
    long = [row for row in results if row.get("length", 0) > predictor.max_length]
    if not long:
        return None
    how = {
        "window": "read as overlapping windows and pooled together",
        "truncate": f"cut to their first {predictor.max_length} residues",
        "centre": f"cut to their central {predictor.max_length} residues",
    }[predictor.long_sequences.value]
    return (
        f"note: {len(long)} sequence(s) longer than the model's {predictor.max_length} "
        f"residues were {how} (--long-sequences)"
    )


def _predict_interactively(args: argparse.Namespace) -> int:
    """`predict --interactive`: load once, then a prompt session (see esmtune.interactive)."""
    from esmtune.interactive import Session
    from esmtune.predict import Predictor, write_predictions

    given = {
        "FASTA files": args.inputs, "--sequence": args.sequence, "--output": args.output,
        "--format": args.format not in (None, "text"),
    }  # fmt: skip
    if extra := [name for name, value in given.items() if value]:
        raise EsmtuneError(
            f"--interactive reads sequences at its prompt and answers as text: drop "
            f"{', '.join(extra)} (or drop --interactive)"
        )
    if _launched():
        raise EsmtuneError("--interactive answers at one prompt: run it without accelerate launch")
    terminal = sys.stdin.isatty()
    if terminal:  # line editing, and no 4,095-character limit on a pasted line
        with contextlib.suppress(ImportError):  # readline is not on every platform
            import readline  # noqa: F401
    options = {name: getattr(args, name) for name in PredictOptions.model_fields}
    predictor = Predictor.load(args.run, **options)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def answer(results: list[dict[str, Any]]) -> None:
        write_predictions(results, predictor.task, "text", sys.stdout)
        sys.stdout.flush()
        if note := _long_sequence_note(results, predictor):
            say(note)

    noun = predictor.task.target_noun
    say(
        f"{args.run}: {predictor.task.task.value} model, {len(predictor.labels)} {noun}. "
        "Enter one sequence per line, or FASTA ended by an empty line; an empty line or "
        "Ctrl-D quits."
    )
    Session(predictor, answer, input, say, args.top_k, prompts=terminal).run()
    return 0


# --- explain ---------------------------------------------------------------------------------

# How `explain` runs the model: predict's options but two. Explaining runs torch (gradients,
# attention weights), never ONNX, and in float32, since bf16 gradients would break IG's sums.
_EXPLAIN_MODEL_OPTIONS = ["device", "max_tokens", "long_sequences"]


def _explain_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "run", type=Path, metavar="RUN", help="run directory, or an hf folder of `esmtune export`"
    )
    _add_sequence_inputs(command)
    _add_fields(command, ExplainOptions, list(ExplainOptions.model_fields))
    command.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="FILE",
        help="write the TSV to FILE [standard output]",
    )
    *others, last = PLOT_SUFFIXES
    command.add_argument(
        "--plot",
        type=Path,
        metavar="FILE_OR_DIR",
        help=f"draw the scores along each sequence: a {', '.join(others)} or {last} file holds "
        "one track per sequence (per-residue runs: per sequence and position, the position "
        "marked); a folder gets one PNG each, named by id (and -position)",
    )
    _add_fields(command, PredictOptions, _EXPLAIN_MODEL_OPTIONS)


def _cmd_explain(args: argparse.Namespace) -> int:
    """Score each residue for what a run predicted.

    Why a run predicted what it did, one score per residue: integrated gradients on the input
    embeddings (--method ig, with Captum) for the predicted label or --label, or attention
    rollout (--method rollout). A per-residue run predicts each residue: --position N says
    whose prediction (its predicted class, or --label's; or its value) to explain. Sequences
    come from FASTA files, --sequence or standard input and are read as predict reads them.
    Writes a TSV (id, position from 1, residue, score, method, label; per-residue runs add
    explained_position and explained_residue) to standard output unless --output is given;
    --plot draws the scores along each sequence. Needs the model in torch (a run or an hf
    export) and, for ig, the explain extra: pip install 'esmtune[explain]'.
    """
    from esmtune.explain import loose_note, plot_explanations, write_explanations
    from esmtune.predict import Predictor

    if _launched():  # (every process would explain every sequence and write the same files)
        raise EsmtuneError(
            "explain does not share its work among processes: run it without accelerate launch"
        )
    records = _read_inputs(args, "explain")
    asked = ExplainOptions.checked(
        label=args.label, method=args.method, steps=args.steps, position=args.position
    )  # bad positions stop before the model loads
    if args.plot is not None:  # so does a bad path: a track per sequence and position
        one_figure(args.plot, len(records) * len(asked.position or [None]))
    options = {name: getattr(args, name) for name in _EXPLAIN_MODEL_OPTIONS}
    predictor = Predictor.load(args.run, **options)
    explanations = predictor.explain(
        records, asked.label, asked.method, asked.steps,
        progress=len(records) > 10, position=asked.position,
    )  # fmt: skip
    cut = len({item.id for item in explanations if item.unread > 0})
    if cut:
        print(
            f"note: {cut} sequence(s) longer than the model's {predictor.max_length} residues "
            f"were cut (--long-sequences {predictor.long_sequences.value}): residues not read "
            "score NaN",
            file=sys.stderr,
        )
    if note := loose_note(explanations, asked.steps):
        print(note, file=sys.stderr)
    if args.output is not None:
        with args.output.open("w", newline="") as handle:
            write_explanations(explanations, handle)
        print(f"{len(explanations)} explanation(s) written to {args.output}", file=sys.stderr)
    else:
        write_explanations(explanations, sys.stdout)
    if args.plot is not None:
        written = plot_explanations(explanations, args.plot)
        shown = str(written[0]) if len(written) == 1 else f"{len(written)} files in {args.plot}"
        print(f"plot: {shown}", file=sys.stderr)
    return 0


# Poolings embed offers: attention pooling is learned, so it exists only inside a trained head.
_EMBED_POOLINGS = [pooling.value for pooling in Pooling if pooling is not Pooling.ATTENTION]


def _embed_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("model", metavar="MODEL", help="hub id, local model folder or run folder")
    _add_sequence_inputs(command)
    _add(
        command,
        "--pooling",
        choices=[*_EMBED_POOLINGS, "per-residue"],
        default=Pooling.MEAN.value,
        help=f"one vector per sequence ({', '.join(_EMBED_POOLINGS)}) or one per residue",
    )
    command.add_argument(
        "--out", "-o", type=Path, required=True, help="output .h5/.npz/.safetensors"
    )
    command.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    command.add_argument(
        "--max-length",
        type=int,
        help="residues per model input [a run's max_length, else "
        f"{DataConfig.model_fields['max_length'].default}]",
    )
    command.add_argument("--revision", help="hub revision (branch, tag or commit)")
    _add_fields(command, PredictOptions, _EMBED_OPTIONS)


def _cmd_embed(args: argparse.Namespace) -> int:
    """Write ESM2 embeddings of sequences to .h5, .npz or .safetensors.

    Embed sequences with a hub ESM2 (e.g. facebook/esm2_t33_650M_UR50D), a local model folder or
    a trained run directory (its fine-tuned backbone), and write them with their ids in the
    format --out names: pooled ones as `ids` + `embeddings` (n x hidden), per-residue ones as one
    array per id. Long sequences are read as overlapping windows unless told otherwise.
    """
    from esmtune.embeddings import (
        EMBEDDING_FORMATS,
        embed_records,
        load_embedder,
        write_embeddings,
    )
    from esmtune.processes import Processes

    if args.out.suffix.lower() not in EMBEDDING_FORMATS:
        *others, last = EMBEDDING_FORMATS
        raise EsmtuneError(f"--out {args.out}: name a {', '.join(others)} or {last} file")
    if args.out.exists() and not args.overwrite:
        raise EsmtuneError(f"{args.out} exists; choose another --out or add --overwrite")
    records = _read_inputs(args, "embed")
    model, tokenizer, trained_length = load_embedder(args.model, args.revision)
    max_length = args.max_length or trained_length
    processes = Processes.current()  # under accelerate launch, each process on its own GPU
    model.to(processes.device_for(args.device) or ("cuda" if _cuda_available() else "cpu"))
    embeddings = embed_records(
        model, tokenizer, records, args.pooling, max_length, args.long_sequences,
        args.max_tokens, progress=True, precision=args.precision,
    )  # fmt: skip
    if not processes.is_main:  # (every process has them all; the main one writes)
        return 0
    long = sum(len(r.sequence) > max_length for r in records)
    if long:
        how = "overlapping windows" if args.long_sequences == "window" else args.long_sequences
        print(f"note: {long} sequence(s) over {max_length} residues: {how}", file=sys.stderr)
    metadata = {
        "model": args.model,
        "pooling": args.pooling,
        "max_length": str(max_length),
        "long_sequences": args.long_sequences,
    }
    write_embeddings(args.out, [r.id for r in records], embeddings, metadata)
    size = embeddings.shape[-1] if hasattr(embeddings, "shape") else embeddings[0].shape[-1]
    print(f"{len(records)} {args.pooling} embedding(s) of size {size} written to {args.out}")
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# --- export ----------------------------------------------------------------------------------

# The quantisations of esmtune.export.FORMATS and its CHECK_SEQUENCES, which import torch
# (tests/test_cli.py holds them equal).
_QUANTIZATIONS = ("int8",)
_CHECK_SEQUENCES = 32


def _export_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("run", type=Path, metavar="RUN", help="run directory")
    formats = [name.value for name in FormatName]
    command.add_argument("--format", choices=formats, required=True, help="export format")
    command.add_argument(
        "--quantize",
        choices=_QUANTIZATIONS,
        help="onnx: also write a dynamic int8 model.int8.onnx",
    )
    command.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="new or empty output folder"
    )
    command.add_argument(
        "--check-sequences",
        type=int,
        metavar="N",
        help="sequences the export is checked on, from the run's validation split when its "
        f"data is readable, else synthetic; 0 skips the check [{_CHECK_SEQUENCES}]",
    )


def _cmd_export(args: argparse.Namespace) -> int:
    """Export a run as a Hugging Face folder or ONNX.

    hf: LoRA merged into a standard Hugging Face folder plus esmtune's head (plain transformers
    loads the backbone; with model.head=esm, AutoModelForSequenceClassification loads the whole
    classifier). onnx: input_ids, attention_mask -> logits with dynamic batch and length, plus
    head.onnx for long sequences in windows; --quantize int8 adds model.int8.onnx. Every export
    is then checked against the run on a sample of sequences (label agreement, largest
    difference, residues/s: export.json and the model card README.md), and the fastest runtime
    that keeps the labels becomes the default of `esmtune predict` and `esmtune serve` on the
    folder. ONNX needs the export extra: pip install 'esmtune[export]'.
    """
    from esmtune.export import CHECK_SEQUENCES, export_run, read_export_info

    count = CHECK_SEQUENCES if args.check_sequences is None else args.check_sequences
    folder = export_run(args.run, args.out, args.format, args.quantize, count)
    print(f"exported {args.run} as {args.format} to {folder} (model card: {folder / 'README.md'})")
    info = read_export_info(folder)
    if info.get("check"):
        check = info["check"]
        print(f"checked against the run on {check['sequences']} sequences ({check['source']}):")
        for name, row in check["runtimes"].items():
            extra = (
                f", same label {row['label_agreement']:.1%}, max diff "
                f"{row['max_abs_difference']:.2g}, {row['file_bytes'] / 2**20:.1f} MiB"
                if name != "run"
                else " (torch)"
            )
            print(f"  {name:<10} {row['residues_per_second']:>10,.0f} residues/s{extra}")
    print(f"default runtime for predict and serve: {info.get('default_runtime')}")
    return 0


# --- serve -----------------------------------------------------------------------------------

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")  # uvicorn's


def _add_serve_settings(command: argparse.ArgumentParser) -> None:
    """An option per ServeSettings field but runtime (shared with predict).

    Name, type, choices, default and help come from the field, so the CLI, create_app and the
    worker processes of ``--workers N`` cannot drift apart.
    """
    _add_fields(command, ServeSettings, [n for n in ServeSettings.model_fields if n != "runtime"])


def _serve_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "run", type=Path, metavar="RUN", help="run directory, or a folder of `esmtune export`"
    )
    _add_runtime_option(command)
    _add(command, "--host", default="127.0.0.1", help="address to listen on")
    _add(command, "--port", type=int, default=8000, help="port")
    _add(
        command,
        "--workers",
        type=int,
        default=1,
        help="server processes; each one loads its own copy of the model (memory x N) and "
        "batches only its own requests, so more than 1 helps only with spare cores or GPUs",
    )
    _add_serve_settings(command)
    _add(command, "--log-level", choices=_LOG_LEVELS, default="info", help="uvicorn's log level")


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve a run's predictions over HTTP (FastAPI).

    An HTTP service over a trained run or its export: POST /predict (JSON or FASTA), GET /info,
    GET /health, a page for people at / and the API docs at /docs. Small requests arriving
    together share one model call (micro-batching); shorter requests go first, and long ones run
    in slices with short ones served in between. Each limit below refuses a request with 413
    naming it. Needs the serve extra: pip install 'esmtune[serve]'.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise EsmtuneError(
            f"serving needs FastAPI and uvicorn ({error.name} is missing): "
            "pip install 'esmtune[serve]'"
        ) from None
    from esmtune.serve import SETTINGS_ENV, create_app

    if args.workers < 1:
        raise EsmtuneError(f"--workers {args.workers}: give 1 or more")
    settings = ServeSettings.checked(
        {name: getattr(args, name) for name in ServeSettings.model_fields}
    )
    if args.workers == 1:
        # Loading here, before the server starts, turns a bad run directory into one message.
        app = create_app(args.run, settings)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
        return 0
    # Several worker processes need an importable factory; each one loads its own model, so
    # what would stop them all is found here first and reported once.
    import os

    from esmtune.predict import check_loadable

    check_loadable(args.run, settings.runtime)
    handed = {"run_dir": str(args.run), "settings": settings.model_dump(mode="json")}
    os.environ[SETTINGS_ENV] = json.dumps(handed)
    uvicorn.run(
        "esmtune.serve:_app_from_environment",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0


# --- plan ------------------------------------------------------------------------------------


def _plan_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", type=Path, help="YAML config file (e.g. configs/train.yaml)")
    fields = [name for name in PlanOptions.model_fields if name != "json_output"]
    _add_fields(command, PlanOptions, fields)
    command.add_argument(
        "--json",
        dest="json_output",
        action="store_true",
        help=field_description(PlanOptions, "json_output"),
    )
    command.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def _cmd_plan(args: argparse.Namespace) -> int:
    """Estimate per-GPU training memory: will it fit?

    Weights, gradients, AdamW state, autocast copies, DDP buckets or FSDP shards, activations
    at the token budget (training.max_tokens, the longest sequence min(data.max_length + 2,
    max_tokens)) and workspace, per GPU, from the model's architecture alone (the published ESM2
    sizes, or a local folder's config.json; nothing is downloaded). Says what fits on --gpus
    GPUs of --gpu-memory GiB and the cheapest changes that would make it fit (gradient
    checkpointing, bf16, LoRA, a smaller token budget, FSDP over more GPUs; pairs of them when
    no single one does). The README's "Memory planning" section states the method and how it
    was validated.
    """
    from esmtune.config import load_config
    from esmtune.plan import format_plan, model_shape, plan, setting_from_config

    config = load_config(args.config, args.overrides)
    options = PlanOptions.checked(
        **{name: getattr(args, name) for name in PlanOptions.model_fields}
    )
    shape = model_shape(config.model.name)
    report = plan(shape, setting_from_config(config, options), options.gpu_memory)
    print(json.dumps(report, indent=2) if options.json_output else format_plan(report))
    return 0


# --- the command table -----------------------------------------------------------------------

# Command -> (function adding its options, handler). A two-word name is a command inside a group.
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], _Handler]] = {
    "train": (_train_options, _cmd_train),
    "tune": (_tune_options, _cmd_tune),
    "data check": (_data_check_options, _cmd_data_check),
    "data split": (_data_split_options, _cmd_data_split),
    "evaluate": (_evaluate_options, _cmd_evaluate),
    "predict": (_predict_options, _cmd_predict),
    "explain": (_explain_options, _cmd_explain),
    "embed": (_embed_options, _cmd_embed),
    "export": (_export_options, _cmd_export),
    "baseline": (_baseline_options, _cmd_baseline),
    "plan": (_plan_options, _cmd_plan),
    "serve": (_serve_options, _cmd_serve),
}
_GROUPS = {"data": "Inspect and split datasets."}


def _handler_help(handler: _Handler) -> str:
    """A command's help: its handler's docstring (one line for ``esmtune --help``, then more)."""
    text = inspect.getdoc(handler)
    if not text:
        raise TypeError(f"{handler.__name__} has no docstring, which is its command's --help")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command of the table, each documented by its handler."""
    parser = argparse.ArgumentParser(
        prog="esmtune",
        description="Fine-tune ESM2 protein language models for sequence-level prediction.",
        epilog="Run `esmtune COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, Any] = {}
    for name, (add_options, handler) in _COMMANDS.items():
        *group, leaf = name.split()
        where = commands
        if group:
            if group[0] not in groups:
                text = _GROUPS[group[0]]
                container = commands.add_parser(group[0], help=text, description=text)
                groups[group[0]] = container.add_subparsers(
                    dest=f"{group[0]}_command", metavar="SUBCOMMAND", required=True
                )
            where = groups[group[0]]
        summary, _, description = _handler_help(handler).partition("\n\n")
        command = where.add_parser(leaf, help=summary, description=description or summary)
        add_options(command)
        command.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; user errors print one clear message and exit with status 2."""
    try:
        return _run(argv)
    except BrokenPipeError:
        # The reader stopped early (`esmtune predict ... | head`): not an error of ours. Point
        # stdout at nothing so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse cannot take positionals after options (PATH --task x KEY=VALUE); overrides
        # are the only positionals that can come late.
        late = [e for e in extra if "=" in e and not e.startswith("-")]
        if late != extra or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *late]
    if args.version:
        from importlib.metadata import version

        print(f"esmtune {version('esmtune')}")
        return 0
    handler: _Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        status = handler(args)
        if status == 0:
            from esmtune.processes import end_launch

            end_launch()  # (under accelerate launch: every process leaves together)
        return status
    except BrokenPipeError:
        raise  # an OSError, but the reader's doing (see main)
    except EsmtuneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        # A runtime-only install (no train extra) asked for a torch path: say what to install.
        from esmtune.extras import TRAINING_MODULES, training_stack_message

        missing = (error.name or "").split(".")[0]
        if missing not in TRAINING_MODULES:
            raise
        print(
            f"error: {training_stack_message(f'esmtune {args.command}', [missing])}",
            file=sys.stderr,
        )
        return 2
    except OSError as error:
        # A full disk or read-only folder in a write no command wrapped (predict -o, embed --out)
        # is the user's to fix too; any other OS error keeps its traceback.
        from esmtune.storage import storage_errno, storage_message

        code = storage_errno(error)
        if code is None:
            raise
        print(f"error: {storage_message(error, code, Path.cwd(), None)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
