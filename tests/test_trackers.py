"""Experiment trackers: tiny runs logged to MLflow and W&B (offline), read back from their logs."""

from __future__ import annotations

import importlib
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import tiny_overrides

from esmtune.cli import main
from esmtune.config import Tracker, load_config
from esmtune.errors import ConfigError
from esmtune.train import train
from esmtune.training import trackers

# Two epochs of 15 optimizer steps each (120 training sequences, batches of 8).
TWO_EPOCHS = ["training.epochs=2", "finetune.mode=frozen", "finetune.cache_embeddings=false"]


def _config(model_dir: Path, data: Path, out: Path, name: str, *settings: str):
    return load_config(None, [*tiny_overrides(model_dir, data, out, name), *TWO_EPOCHS, *settings])


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite tracking store, unaffected by the environment's MLflow settings."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps artifacts in ./mlruns
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_mlflow_gets_config_curves_best_metrics_and_files(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, mlflow_store: str
) -> None:
    mlflow, store = pytest.importorskip("mlflow"), mlflow_store
    config = _config(
        tiny_model_dir, learnable_data, tmp_path / "runs", "tracked",
        "training.trackers=[tensorboard,mlflow]", f"training.mlflow_tracking_uri={store}",
        "training.tracker_project=tests",
    )  # fmt: skip
    run_dir = train(config)

    client = mlflow.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["training.epochs"] == "2"
    assert run.data.params["model.name"] == str(tiny_model_dir)
    assert run.data.params["model.head_hidden"] == "[32]"
    assert run.data.params["training.trackers"] == "['tensorboard', 'mlflow']"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == list(range(1, 31))  # every optimizer step
    assert losses[-1].value < losses[0].value
    summary = json.loads((run_dir / "metrics.json").read_text())
    f1 = client.get_metric_history(run.info.run_id, "validation/macro_f1")
    assert [(m.step, m.value) for m in f1] == [
        (entry["step"], pytest.approx(entry["macro_f1"])) for entry in summary["history"]
    ]
    assert run.data.metrics["best/macro_f1"] == pytest.approx(summary["best_value"])
    assert run.data.metrics["best/epoch"] == summary["best_epoch"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "training_curves.png", "model"} <= artifacts
    model = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert model == {"model/best_validation_metrics.json"}
    copied = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path)))
    assert json.loads(copied.read_text()) == summary
    # TensorBoard beside it, as without trackers: one event file in tensorboard/, same tags.
    (events,) = (run_dir / "tensorboard").iterdir()
    assert events.name.startswith("events.out.tfevents.")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(events)).Reload()
    assert set(scalars.Tags()["scalars"]) == {
        "train/loss", "train/learning_rate", "train/grad_norm", "train/residues_per_second",
        *(f"validation/{name}" for name in ("macro_f1", "accuracy", "weighted_f1", "mcc")),
        "validation/roc_auc_ovr", "validation/loss",
    }  # fmt: skip
    assert [e.step for e in scalars.Scalars("train/loss")] == list(range(1, 31))


def test_a_failed_run_ends_its_mlflow_run_as_failed(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, mlflow_store: str, monkeypatch
) -> None:
    mlflow, store = pytest.importorskip("mlflow"), mlflow_store
    config = _config(
        tiny_model_dir, learnable_data, tmp_path / "runs", "failed",
        "training.trackers=[mlflow]", f"training.mlflow_tracking_uri={store}",
    )  # fmt: skip

    def broken_fit(run, state) -> None:
        raise RuntimeError("out of memory")

    # The module, not esmtune.train (the package's lazy attribute may be the function).
    monkeypatch.setattr(importlib.import_module("esmtune.train"), "_fit", broken_fit)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(config)
    client = mlflow.MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("esmtune").experiment_id])
    assert run.info.status == "FAILED"
    assert client.list_artifacts(run.info.run_id) == []
    assert mlflow.active_run() is None


def test_a_resumed_run_logs_into_the_same_mlflow_run(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, mlflow_store: str
) -> None:
    mlflow, store = pytest.importorskip("mlflow"), mlflow_store
    config = _config(
        tiny_model_dir, learnable_data, tmp_path / "runs", "resumed",
        "training.trackers=[mlflow]", f"training.mlflow_tracking_uri={store}",
    )  # fmt: skip
    run_dir = train(config)
    first = json.loads((run_dir / trackers.TRACKER_RUNS_FILE).read_text())["mlflow"]
    # As if stopped after the first epoch's checkpoint.
    (run_dir / "metrics.json").unlink()
    shutil.rmtree(sorted((run_dir / "checkpoints").iterdir())[-1])
    assert main(["train", "--resume", str(run_dir)]) == 0

    client = mlflow.MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("esmtune").experiment_id])
    assert run.info.run_id == first and run.info.status == "FINISHED"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == sorted([*range(1, 31), *range(16, 31)])
    assert "metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_wandb_offline_run_holds_config_and_metrics(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, monkeypatch
) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = _config(
        tiny_model_dir, learnable_data, tmp_path / "runs", "offline",
        "training.trackers=[wandb]", "training.epochs=1",
    )  # fmt: skip
    run_dir = train(config)
    # The run is finished, but wandb's service may still be writing its log; ending the
    # service waits for it.
    wandb.teardown()

    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    config_items, history, summary = _wandb_offline_log(next(offline.glob("run-*.wandb")))
    assert config_items["training.epochs"] == 1
    assert config_items["model.pooling"] == "mean"
    assert config_items["model.head_hidden"] == [32]
    assert [row["_step"] for row in history] == list(range(1, 16))  # a row per optimizer step
    assert all("train/loss" in row for row in history)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert history[-1]["validation/macro_f1"] == pytest.approx(metrics["history"][-1]["macro_f1"])
    assert summary["best/macro_f1"] == pytest.approx(metrics["best_value"])
    assert summary["best/epoch"] == 1
    files = offline / "files" / "offline"  # the run directory's files, under its name
    assert json.loads((files / "metrics.json").read_text()) == metrics
    assert (files / "training_curves.png").is_file()
    assert (files / "model" / "best_validation_metrics.json").is_file()
    assert not (run_dir / "tensorboard").exists(), "only the trackers asked for"


def _wandb_offline_log(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """The config, history rows and final summary recorded in an offline run's .wandb file.

    wandb (0.19 on) writes config.yaml and wandb-summary.json only when a run is synced, and
    ships no Python reader of its log: it is LevelDB's log format (32 KiB blocks of records,
    each behind a 7-byte crc/length/type header; a record may be split over blocks) after a
    7-byte ``:W&B`` file header, each record a ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    config_items: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    position, pending = 7, b""
    while position + 7 <= len(data):
        if (left := 32768 - position % 32768) < 7:  # a block's tail too short for a header
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind not in (1, 4):  # FULL or LAST completes a record; FIRST, MIDDLE continue one
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        kind_name = record.WhichOneof("record_type")
        if kind_name == "config":
            items = record.config.update
            config_items.update({_wandb_key(i): json.loads(i.value_json) for i in items})
        elif kind_name == "history":
            history.append({_wandb_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind_name == "summary":
            items = record.summary.update
            summary.update({_wandb_key(i): json.loads(i.value_json) for i in items})
    return config_items, history, summary


def _wandb_key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def test_a_missing_tracker_package_names_its_extra(monkeypatch) -> None:
    monkeypatch.setattr(trackers, "_installed", lambda package: package != "wandb")
    with pytest.raises(ConfigError) as error:
        trackers.check_trackers_installed([Tracker.TENSORBOARD, Tracker.MLFLOW, Tracker.WANDB])
    assert "pip install 'esmtune[wandb]'" in str(error.value)
    assert "mlflow" not in str(error.value)


def test_missing_tracker_stops_training_before_the_data_is_read(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(trackers, "_installed", lambda package: False)
    config = load_config(
        None, [f"data.path={tmp_path / 'absent'}", "training.trackers=[tensorboard,mlflow]"]
    )
    with pytest.raises(ConfigError, match=r"esmtune\[mlflow\]"):
        train(config)


def test_trackers_are_checked_in_the_config() -> None:
    assert load_config(None).training.trackers == [Tracker.TENSORBOARD]
    with pytest.raises(ConfigError, match="tensorboard more than once"):
        load_config(None, ["training.trackers=[tensorboard,tensorboard]"])
    with pytest.raises(ConfigError, match=r"training\.trackers\.0"):
        load_config(None, ["training.trackers=[neptune]"])


def test_parameters_are_flat_dotted_keys() -> None:
    flat = trackers.flat_parameters(load_config(None).to_yaml_dict())
    assert flat["training.early_stopping.patience"] == 0
    assert flat["finetune.lora.r"] == 8
    assert flat["model.head_hidden"] == [256]
    assert not any(isinstance(value, dict) and value for value in flat.values())
