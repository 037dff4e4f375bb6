"""The command table. Each command parses its options, then calls one library function.

Heavy libraries (torch, transformers) are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from esmtune.errors import EsmtuneError

if TYPE_CHECKING:
    from esmtune.config import DataConfig, Task

__all__ = ["build_parser", "main"]

_TRAIN_EPILOG_HEAD = """\
Every config key can be overridden after the options as key=value (values are YAML):
  esmtune train --config configs/train.yaml training.epochs=3 model.pooling=attention

Config keys (section.key: meaning [default]):
"""


def _config_help() -> str:
    from esmtune.config import describe_fields

    rows = describe_fields()
    width = max(len(key) for key, _ in rows)
    return _TRAIN_EPILOG_HEAD + "\n".join(f"  {key.ljust(width)}  {text}" for key, text in rows)


def _cmd_train(args: argparse.Namespace) -> int:
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


def _data_config(args: argparse.Namespace) -> tuple[Task, DataConfig]:
    """The task and data section that `data check` and `baseline` read, from a config and flags."""
    from esmtune.config import load_config

    overrides = list(args.overrides)
    if args.path is not None and "=" in str(args.path) and not args.path.exists():
        overrides.insert(0, str(args.path))  # `--config FILE KEY=VALUE`: no PATH was given
        args.path = None
    flags = {
        "data.path": args.path,
        "task": args.task,
        "data.target_columns": args.target_columns,
        "data.id_column": args.id_column,
        "data.sequence_column": args.sequence_column,
        "data.split_column": args.split_column,
        "data.ontology": args.ontology,
        "data.max_length": getattr(args, "max_length", None),
        "data.fail_on_leakage": getattr(args, "fail_on_leakage", None) or None,
        "data.drop_conflicts": getattr(args, "drop_conflicts", None) or None,
        "data.drop_duplicates": getattr(args, "drop_duplicates", None) or None,
    }
    for key, value in flags.items():
        if value is not None:
            text = str(value) if isinstance(value, Path) else value
            overrides.append(f"{key}={json.dumps(text)}")
    config = load_config(args.config, overrides)
    return config.task, config.data


def _cmd_data_check(args: argparse.Namespace) -> int:
    from esmtune.data.check import check_dataset

    task, data = _data_config(args)
    report = check_dataset(data, task, require_test=args.require_test)
    print(f"{task.value} data, {report.layout}")
    print(report.table())
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.notes:
        print(f"note: {line}")
    report.raise_if_errors()
    what = "target(s)" if task.value == "regression" else "labels"
    print(f"OK: {data.path} can be trained on ({len(report.labels)} {what})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from esmtune.evaluate import evaluate_run, format_report

    metrics, _, written = evaluate_run(args.run, args.data, args.split, args.max_tokens)
    print(format_report(metrics))
    print(f"\nwritten: {', '.join(str(path) for path in written)}")
    return 0


def _read_inputs(args: argparse.Namespace) -> list:
    from esmtune.data.fasta import SequenceRecord, parse_fasta, read_fasta

    records: list[SequenceRecord] = []
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
            "nothing to predict: give FASTA files, --sequence SEQ, or FASTA on standard input"
        )
    return records


def _cmd_predict(args: argparse.Namespace) -> int:
    from esmtune.predict import Predictor, write_predictions

    records = _read_inputs(args)
    predictor = Predictor.load(
        args.run, args.runtime, device=args.device, max_tokens=args.max_tokens,
        long_sequences=args.long_sequences, precision=args.precision,
    )  # fmt: skip
    results = predictor.predict(records, top_k=args.top_k, progress=len(records) > 100)
    long = [row for row in results if row["length"] > predictor.max_length]
    if long:
        how = {
            "window": "read as overlapping windows and pooled together",
            "truncate": f"cut to their first {predictor.max_length} residues",
            "centre": f"cut to their central {predictor.max_length} residues",
        }[predictor.long_sequences.value]
        print(
            f"note: {len(long)} sequence(s) longer than the model's {predictor.max_length} "
            f"residues were {how} (--long-sequences)",
            file=sys.stderr,
        )
    fmt = args.format
    if args.output is not None:
        suffixes = {".json": "json", ".csv": "csv", ".txt": "text"}
        fmt = fmt or suffixes.get(args.output.suffix.lower(), "tsv")
        with args.output.open("w", newline="") as handle:
            write_predictions(results, predictor.task, fmt, handle)
        print(f"{len(results)} prediction(s) written to {args.output}", file=sys.stderr)
    else:
        write_predictions(results, predictor.task, fmt or "tsv", sys.stdout)
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from esmtune.embeddings import embed_records, load_embedder, write_embeddings

    if args.out.suffix.lower() not in (".h5", ".npz", ".safetensors"):
        raise EsmtuneError(f"--out {args.out}: name a .h5, .npz or .safetensors file")
    if args.out.exists() and not args.overwrite:
        raise EsmtuneError(f"{args.out} exists; choose another --out or add --overwrite")
    records = _read_inputs(args)
    model, tokenizer, trained_length = load_embedder(args.model, args.revision)
    max_length = args.max_length or trained_length
    model.to(args.device or ("cuda" if _cuda_available() else "cpu"))
    embeddings = embed_records(
        model, tokenizer, records, args.pooling, max_length, args.long_sequences,
        args.max_tokens, progress=True, precision=args.precision,
    )  # fmt: skip
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


def _cmd_export(args: argparse.Namespace) -> int:
    from esmtune.export import CHECK_SEQUENCES, export_run
    from esmtune.model.exported import read_export_info

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


def _cmd_baseline(args: argparse.Namespace) -> int:
    from esmtune.baseline import composition_baseline

    task, data = _data_config(args)
    result = composition_baseline(data, task, args.split)
    names = {
        "multiclass": ("accuracy", "macro_f1", "mcc"),
        "binary": ("mcc", "f1", "roc_auc", "pr_auc"),
        "multilabel": ("fmax", "micro_f1", "macro_f1", "micro_ap"),
        "regression": ("spearman", "pearson", "r2", "rmse"),
    }[result["task"]]

    def scores(metrics: dict) -> str:
        return ", ".join(
            f"{name} {'n/a' if metrics[name] is None else format(metrics[name], '.3f')}"
            for name in names
        )

    model = "ridge" if result["task"] == "regression" else "logistic"
    print(
        f"composition baseline ({model} regression on amino-acid + dipeptide composition), "
        f"{result['split']} n={result['n']}: {scores(result['model'])}\n"
        f"{result['trivial_name']}: {scores(result['trivial'])}"
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise EsmtuneError(
            f"serving needs FastAPI and uvicorn ({error.name} is missing): "
            "pip install 'esmtune[serve]'"
        ) from None
    from esmtune.serve import SETTINGS_ENV, ServeSettings, create_app

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


def _add_serve_settings(command: argparse.ArgumentParser) -> None:
    """An option per ServeSettings field but runtime (shared with predict).

    Name, type, choices, default and help come from the field, so the CLI, create_app and the
    worker processes of ``--workers N`` cannot drift apart.
    """
    import typing

    from esmtune.serve import ServeSettings

    for name, spec in ServeSettings.model_fields.items():
        if name == "runtime":
            continue
        option: dict[str, typing.Any] = {"default": spec.default, "help": spec.description}
        if spec.default is not None:  # a None default is explained in the description
            option["help"] += f" [{spec.default}]"
        if typing.get_origin(spec.annotation) is typing.Literal:
            option["choices"] = typing.get_args(spec.annotation)
        else:  # int, float or str, possibly | None
            kinds = typing.get_args(spec.annotation) or (spec.annotation,)
            kind = next(k for k in (int, float, str) if k in kinds)
            option |= {"type": kind, "metavar": "NAME" if kind is str else "N"}
        command.add_argument("--" + name.replace("_", "-"), **option)


def _add_data_options(command: argparse.ArgumentParser) -> None:
    """Options shared by `data check` and `baseline`: where the data is and how to read it."""
    command.add_argument(
        "path",
        type=Path,
        nargs="?",
        metavar="PATH",
        help="dataset: a folder {train,validation,test}/<Label>.fasta, a folder of "
        "train/validation/test files (.csv .tsv .parquet .fasta), or one file with a split "
        "column [data.path of --config]",
    )
    command.add_argument(
        "--config", type=Path, help="read task and data settings from this training config"
    )
    command.add_argument(
        "--task",
        choices=["multiclass", "binary", "multilabel", "regression"],
        help="how targets are read [multiclass, or the config's]",
    )
    command.add_argument(
        "--target-column",
        dest="target_columns",
        action="append",
        metavar="NAME",
        help="target column or FASTA header key, repeatable [label; regression: target]",
    )
    command.add_argument("--id-column", help="column holding ids [id]")
    command.add_argument("--sequence-column", help="column holding sequences [sequence]")
    command.add_argument("--split-column", help="column naming the split [split]")
    command.add_argument("--ontology", type=Path, help="multilabel: OBO file, e.g. go-basic.obo")
    command.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="other config keys, e.g. data.max_length=500",
    )


def _add_sequence_inputs(command: argparse.ArgumentParser) -> None:
    """Where `predict` and `embed` read sequences from."""
    command.add_argument(
        "inputs", nargs="*", type=Path, metavar="FASTA", help="FASTA files ('-' = standard input)"
    )
    command.add_argument(
        "--sequence", action="append", metavar="SEQ", help="a raw sequence (repeatable)"
    )


_RUNTIME_HELP = (
    "what runs the model: auto = torch for a run or an hf export; for an onnx export, the "
    "graph its export check found fastest among those that keep the run's labels "
    "(export.json); or force torch, onnx (fp32) or onnx-int8 [auto]"
)


def _add_runtime_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--runtime", choices=["auto", "torch", "onnx", "onnx-int8"], default="auto",
        help=_RUNTIME_HELP,
    )  # fmt: skip


def _add_inference_options(command: argparse.ArgumentParser) -> None:
    """How `predict` and `embed` run the model: batches, long sequences, device, precision."""
    command.add_argument(
        "--max-tokens",
        type=int,
        help="token budget per batch (inputs x longest input); CPUs run fastest with small "
        "batches, GPUs need wide ones [1024 on CPU, 16384 on GPU]",
    )
    command.add_argument(
        "--long-sequences",
        choices=["window", "truncate", "centre"],
        default="window",
        help="sequences longer than the model's max_length: overlapping windows pooled "
        "together, or only the first / central residues [window]",
    )
    command.add_argument("--device", help="cpu, cuda, cuda:1 ... [cuda if available]")
    command.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="fp32",
        help="bf16 autocast: faster where the hardware runs bf16 natively (recent GPUs, CPUs "
        "with AVX512-BF16 or AMX), slower where it is emulated; auto = bf16 exactly there; see "
        "the README's Performance section [fp32]",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command and option documented."""
    parser = argparse.ArgumentParser(
        prog="esmtune",
        description="Fine-tune ESM2 protein language models for sequence-level prediction.",
        epilog="Run `esmtune COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="fine-tune a model (checks the data first)",
        description="Check the data, fine-tune ESM2 and save the best model in a run directory. "
        "Run under `accelerate launch` for mixed precision or several GPUs/processes.",
        epilog=_config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", type=Path, help="YAML config file (e.g. configs/train.yaml)")
    train.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue an interrupted run from its newest intact checkpoint, with its saved "
        "config (a run stopped before its first checkpoint starts afresh in place; a finished "
        "run is reported and left unchanged)",
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    train.set_defaults(handler=_cmd_train)

    data = commands.add_parser("data", help="inspect datasets", description="Inspect datasets.")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    check = data_commands.add_parser(
        "check",
        help="validate a dataset and print its statistics",
        description="Read a dataset the way training will (per-label FASTA folders, CSV/TSV/"
        "Parquet tables or FASTA with key=value headers) and print sequences per label and split "
        "(regression: target statistics) and lengths; exit with status 2 and every problem "
        "listed (file, line, record, fix) when the data cannot be trained on.",
    )
    _add_data_options(check)
    check.add_argument("--max-length", type=int, help="report sequences longer than this [1022]")
    check.add_argument(
        "--fail-on-leakage",
        action="store_true",
        help="treat sequences shared by train and validation/test as an error",
    )
    check.add_argument(
        "--drop-conflicts",
        action="store_true",
        help="drop sequences found with two different targets (and say how many)",
    )
    check.add_argument(
        "--drop-duplicates",
        action="store_true",
        help="keep the first of repeated ids within a split instead of failing",
    )
    check.add_argument("--require-test", action="store_true", help="fail when test/ is missing")
    check.set_defaults(handler=_cmd_data_check)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a run on a labelled split",
        description="Every metric of the run's task on a split, with its saved thresholds "
        "(multiclass: accuracy, macro/weighted F1, MCC, ROC-AUC, per class; binary: + precision, "
        "recall, F1, PR-AUC; multilabel: Fmax and coverage, micro/macro F1 and AP, per label; "
        "regression: Spearman, Pearson, R², RMSE, MAE) and plots (confusion matrix, ROC/PR "
        "curves or predicted-vs-true scatter), written to RUN/eval/SPLIT/ with predictions.csv.",
    )
    evaluate.add_argument("run", type=Path, metavar="RUN", help="run directory")
    evaluate.add_argument(
        "--data",
        type=Path,
        metavar="PATH",
        help="dataset, read with the run's column settings [the one the run trained on]",
    )
    evaluate.add_argument(
        "--split", default="test", choices=["train", "validation", "test"], help="split [test]"
    )
    evaluate.add_argument(
        "--max-tokens", type=int, help="token budget per batch [1024 on CPU, 16384 on GPU]"
    )
    evaluate.set_defaults(handler=_cmd_evaluate)

    predict = commands.add_parser(
        "predict",
        help="predict labels for new sequences",
        description="Predictions of a run (or of its export: hf in torch, onnx in "
        "onnxruntime) for each sequence, from FASTA files, --sequence or "
        "standard input; TSV on standard output unless --output is given. Per task: the label "
        "and class probabilities (multiclass), the label at the tuned threshold and P(positive) "
        "(binary), every label above its threshold and the top-k ranked labels with names "
        "(multilabel), the value of each target (regression).",
    )
    predict.add_argument(
        "run", type=Path, metavar="RUN", help="run directory, or a folder of `esmtune export`"
    )
    _add_sequence_inputs(predict)
    _add_runtime_option(predict)
    predict.add_argument(
        "--top-k",
        type=int,
        help="rank only the k most probable labels [multiclass: all; multilabel: 5]",
    )
    predict.add_argument(
        "--output", "-o", type=Path, help="write to FILE; format from .csv/.tsv/.json/.txt"
    )
    predict.add_argument(
        "--format",
        choices=["tsv", "csv", "json", "text"],
        help="output format; text is for reading, with probability bars [tsv, or from --output]",
    )
    _add_inference_options(predict)
    predict.set_defaults(handler=_cmd_predict)

    embed = commands.add_parser(
        "embed",
        help="write ESM2 embeddings of sequences to .h5, .npz or .safetensors",
        description="Embed sequences with a hub ESM2 (e.g. facebook/esm2_t33_650M_UR50D), a local "
        "model folder or a trained run directory (its fine-tuned backbone), and write them with "
        "their ids in the format --out names: pooled ones as `ids` + `embeddings` (n x hidden), "
        "per-residue ones as one array per id. Long sequences are read as overlapping windows "
        "unless told otherwise.",
    )
    embed.add_argument("model", metavar="MODEL", help="hub id, local model folder or run folder")
    _add_sequence_inputs(embed)
    embed.add_argument(
        "--pooling",
        choices=["mean", "cls", "max", "per-residue"],
        default="mean",
        help="one vector per sequence (mean, cls, max) or one per residue [mean]",
    )
    embed.add_argument("--out", "-o", type=Path, required=True, help="output .h5/.npz/.safetensors")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    embed.add_argument(
        "--max-length", type=int, help="residues per model input [a run's max_length, else 1022]"
    )
    embed.add_argument("--revision", help="hub revision (branch, tag or commit)")
    _add_inference_options(embed)
    embed.set_defaults(handler=_cmd_embed)

    export = commands.add_parser(
        "export",
        help="export a run as a Hugging Face folder or ONNX",
        description="hf: LoRA merged into a standard Hugging Face folder plus esmtune's head "
        "(plain transformers loads the backbone; with model.head=esm, "
        "AutoModelForSequenceClassification loads the whole classifier). onnx: input_ids, "
        "attention_mask -> logits with dynamic batch and length, plus head.onnx for long "
        "sequences in windows; --quantize int8 adds model.int8.onnx. Every export is then "
        "checked against the run on a sample of sequences (label agreement, largest difference,"
        " residues/s: export.json and the model card README.md), and the fastest runtime that "
        "keeps the labels becomes the default of `esmtune predict` and `esmtune serve` on the "
        "folder. ONNX needs the export extra: pip install 'esmtune[export]'.",
    )
    export.add_argument("run", type=Path, metavar="RUN", help="run directory")
    export.add_argument("--format", choices=["hf", "onnx"], required=True, help="export format")
    export.add_argument(
        "--quantize", choices=["int8"], help="onnx: also write a dynamic int8 model.int8.onnx"
    )
    export.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="new or empty output folder"
    )
    export.add_argument(
        "--check-sequences",
        type=int,
        metavar="N",
        help="sequences the export is checked on, from the run's validation split when its "
        "data is readable, else synthetic; 0 skips the check [32]",
    )
    export.set_defaults(handler=_cmd_export)

    baseline = commands.add_parser(
        "baseline",
        help="score a composition baseline on a dataset",
        description="A linear model on amino-acid + dipeptide composition (logistic regression; "
        "ridge for regression), fitted on train and scored on a split with the task's metrics, "
        "beside a trivial predictor (commonest label, label frequencies or the train mean): the "
        "numbers a fine-tuned model has to beat.",
    )
    _add_data_options(baseline)
    baseline.add_argument(
        "--split", default="test", choices=["validation", "test"], help="split to score [test]"
    )
    baseline.set_defaults(handler=_cmd_baseline)

    serve = commands.add_parser(
        "serve",
        help="serve a run's predictions over HTTP (FastAPI)",
        description="An HTTP service over a trained run or its export: POST /predict (JSON or "
        "FASTA), GET /info, GET /health, a page for people at / and the API docs at /docs. "
        "Small requests arriving together share one model call (micro-batching); shorter "
        "requests go first, and long ones run in slices with short ones served in between. "
        "Each limit below refuses a request with 413 naming it. Needs the serve extra: "
        "pip install 'esmtune[serve]'.",
    )
    serve.add_argument(
        "run", type=Path, metavar="RUN", help="run directory, or a folder of `esmtune export`"
    )
    _add_runtime_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    serve.add_argument("--port", type=int, default=8000, help="port [8000]")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes; each one loads its own copy of the model (memory x N) and "
        "batches only its own requests, so more than 1 helps only with spare cores or GPUs [1]",
    )
    _add_serve_settings(serve)
    serve.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        default="info",
        help="uvicorn's log level [info]",
    )
    serve.set_defaults(handler=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; user errors print one clear message and exit with status 2."""
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
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except EsmtuneError as error:
        print(f"error: {error}", file=sys.stderr)
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
