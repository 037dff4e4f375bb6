"""The command table. Each command parses its options, then calls one library function.

Heavy libraries (torch, transformers) are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

from esmtune.errors import EsmtuneError

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


def _cmd_data_check(args: argparse.Namespace) -> int:
    from esmtune.data.check import CheckOptions, check_dataset

    options = CheckOptions(
        max_length=args.max_length,
        fail_on_leakage=args.fail_on_leakage,
        drop_conflicts=args.drop_conflicts,
        drop_duplicates=args.drop_duplicates,
        require_test=args.require_test,
    )
    report = check_dataset(args.data_dir, options)
    print(report.table())
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.notes:
        print(f"note: {line}")
    report.raise_if_errors()
    print(f"OK: {args.data_dir} can be trained on ({len(report.labels)} labels)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from esmtune.evaluate import evaluate_run, format_report

    metrics, out = evaluate_run(args.run, args.data, args.split, args.batch_size)
    print(format_report(metrics))
    written = ", ".join(str(out / name) for name in ("metrics.json", "confusion_matrix.png"))
    print(f"\nwritten: {written}, {out / 'predictions.csv'}")
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


def _write_predictions(
    results: list[dict], labels: list[str], fmt: str, handle: io.TextIOBase
) -> None:
    if fmt == "json":
        json.dump(results, handle, indent=2)
        handle.write("\n")
        return
    writer = csv.writer(handle, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
    writer.writerow(["id", "label", "probability", "top_k", *(f"p_{x}" for x in labels)])
    for row in results:
        top = ";".join(f"{label}:{p:.4f}" for label, p in row["top_k"])
        probabilities = [f"{row['probabilities'][x]:.6f}" for x in labels]
        writer.writerow([row["id"], row["label"], f"{row['probability']:.6f}", top, *probabilities])


def _cmd_predict(args: argparse.Namespace) -> int:
    from esmtune.predict import Predictor

    records = _read_inputs(args)
    predictor = Predictor.from_run(args.run, device=args.device, batch_size=args.batch_size)
    results = predictor.predict(records, top_k=args.top_k, progress=len(records) > 100)
    truncated = sum(row["truncated"] for row in results)
    if truncated:
        print(
            f"note: {truncated} sequence(s) longer than {predictor.max_length} residues were "
            "truncated to their first residues",
            file=sys.stderr,
        )
    fmt = args.format
    if args.output is not None:
        fmt = fmt or {".json": "json", ".csv": "csv"}.get(args.output.suffix.lower(), "tsv")
        with args.output.open("w", newline="") as handle:
            _write_predictions(results, predictor.labels, fmt, handle)
        print(f"{len(results)} prediction(s) written to {args.output}", file=sys.stderr)
    else:
        _write_predictions(results, predictor.labels, fmt or "tsv", sys.stdout)
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from esmtune.baseline import composition_baseline

    result = composition_baseline(args.data_dir, args.split)
    print(
        f"composition baseline (logistic regression on amino-acid + dipeptide composition), "
        f"{result['split']} n={result['n']}: accuracy {result['accuracy']:.3f}, "
        f"macro-F1 {result['macro_f1']:.3f}; always '{result['majority_label']}': "
        f"accuracy {result['majority_accuracy']:.3f}"
    )
    return 0


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
        help="continue an interrupted run from its newest checkpoint, with its saved config",
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    train.set_defaults(handler=_cmd_train)

    data = commands.add_parser("data", help="inspect datasets", description="Inspect datasets.")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    check = data_commands.add_parser(
        "check",
        help="validate a dataset folder and print its statistics",
        description="Validate DIR/{train,validation,test}/<Label>.fasta: print sequences per label "
        "and split and length statistics; exit with status 2 and every problem listed when the "
        "data cannot be trained on.",
    )
    check.add_argument("data_dir", type=Path, metavar="DIR", help="dataset folder")
    check.add_argument(
        "--max-length", type=int, default=1022, help="report sequences longer than this [1022]"
    )
    check.add_argument(
        "--fail-on-leakage",
        action="store_true",
        help="treat sequences shared by train and validation/test as an error",
    )
    check.add_argument(
        "--drop-conflicts",
        action="store_true",
        help="drop sequences found under two labels (and say how many) instead of failing",
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
        description="Accuracy, macro-F1, MCC, per-class precision/recall/F1, ROC-AUC and the "
        "confusion matrix of a run's best model; written to RUN/eval/SPLIT/ (metrics.json, "
        "confusion_matrix.png, predictions.csv).",
    )
    evaluate.add_argument("run", type=Path, metavar="RUN", help="run directory")
    evaluate.add_argument(
        "--data", type=Path, metavar="DIR", help="dataset folder [the one the run trained on]"
    )
    evaluate.add_argument(
        "--split", default="test", choices=["train", "validation", "test"], help="split [test]"
    )
    evaluate.add_argument("--batch-size", type=int, help="sequences per batch [training's]")
    evaluate.set_defaults(handler=_cmd_evaluate)

    predict = commands.add_parser(
        "predict",
        help="predict labels for new sequences",
        description="Predicted label and every class probability for each sequence, from FASTA "
        "files, --sequence or standard input; TSV on standard output unless --output is given.",
    )
    predict.add_argument("run", type=Path, metavar="RUN", help="run directory")
    predict.add_argument(
        "inputs", nargs="*", type=Path, metavar="FASTA", help="FASTA files ('-' = standard input)"
    )
    predict.add_argument(
        "--sequence", action="append", metavar="SEQ", help="a raw sequence (repeatable)"
    )
    predict.add_argument("--top-k", type=int, help="rank only the k most probable labels [all]")
    predict.add_argument(
        "--output", "-o", type=Path, help="write to FILE; format from .csv/.tsv/.json"
    )
    predict.add_argument(
        "--format", choices=["tsv", "csv", "json"], help="output format [tsv, or from --output]"
    )
    predict.add_argument("--batch-size", type=int, default=16, help="sequences per batch [16]")
    predict.add_argument("--device", help="cpu, cuda, cuda:1 ... [cuda if available]")
    predict.set_defaults(handler=_cmd_predict)

    baseline = commands.add_parser(
        "baseline",
        help="score a composition baseline on a dataset",
        description="Logistic regression on amino-acid + dipeptide composition, fitted on train "
        "and scored on a split, beside the always-the-commonest-label score: the numbers a "
        "fine-tuned model has to beat.",
    )
    baseline.add_argument("data_dir", type=Path, metavar="DIR", help="dataset folder")
    baseline.add_argument(
        "--split", default="test", choices=["validation", "test"], help="split to score [test]"
    )
    baseline.set_defaults(handler=_cmd_baseline)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; user errors print one clear message and exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
