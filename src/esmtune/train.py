"""Training: check the data, build the model, fit with accelerate, keep the best weights.

Read top to bottom: :func:`train` sets up in a few named calls, :func:`_fit` runs ``for epoch`` /
``for batch``, evaluation and checkpointing are calls with their own names, and a summary ends
the run. Progressive unfreezing (:class:`~esmtune.model.tuning.ProgressiveUnfreezing`) and step
metrics (:class:`~esmtune.training.log.TrainingLog`) are objects the loop calls in a line each.
The same code runs on one CPU or under ``accelerate launch`` with several processes; mixed
precision and the number of processes come from the accelerate config.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import DataLoaderShard
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from torch.utils.data import DataLoader
from transformers import PretrainedConfig, get_scheduler

from esmtune.checkpoint import (
    ResumePlan,
    TrainerState,
    gathered,
    load_checkpoint,
    occupied_error,
    plan_resume,
    remove_tree,
    save_checkpoint,
    storage_failure_fix,
    unfinished_checkpoints,
)
from esmtune.config import TASK_METRICS, TrainConfig, TrainingConfig
from esmtune.data.batching import BudgetedDataset, EncodedDataset, TokenBudgetBatchSampler
from esmtune.data.check import DataReport, check_dataset
from esmtune.inference import iterate_outputs, model_inputs, place_residues, sequence_rows
from esmtune.metrics import is_improvement
from esmtune.model.backbone import check_backbone_available
from esmtune.model.classifier import SequenceClassifier, build_model
from esmtune.model.embedding_head import EmbeddingClassifier, EmbeddingSource
from esmtune.model.initial import check_initial_run, initialise_from
from esmtune.model.run_model import kept_tensors
from esmtune.model.tuning import ProgressiveUnfreezing, count_parameters
from esmtune.plots import plot_training_curves
from esmtune.processes import Processes
from esmtune.rundir import (
    LEAKAGE_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    atomic_write_text,
    save_run_files,
    save_weights,
)
from esmtune.storage import check_writable, storage_errors
from esmtune.tasks import TaskSpec, build_task
from esmtune.training.loaders import encode_split, make_embedding_loaders, make_loaders
from esmtune.training.log import TrainingLog, attach_run_log, detach_run_logs, say
from esmtune.training.residue_cache import CachedResidueStates
from esmtune.training.sharding import check_sharding, shard_on_cpus, single_checkpointing
from esmtune.training.trackers import check_trackers_installed, finish_trackers, start_trackers

__all__ = ["ValidationHook", "encode_split", "train"]

# Called after each validation with (epoch, value of the selection metric or None); True stops
# the run there, ending it as early stopping does (summary written, best weights kept). A
# hyperparameter search prunes poor trials through it without code of its own in the loop.
ValidationHook = Callable[[int, float | None], bool]


class _NoUnfreezing:
    """No backbone, no layers to unfreeze: a head on precomputed embeddings."""

    def for_epoch(self, epoch: int) -> str | None:
        """Nothing changes."""
        return None

    def mask_gradients(self) -> None:
        """Nothing to mask."""


@dataclass
class _Run:
    """Everything the loop needs, made once by :func:`_set_up`."""

    accelerator: Accelerator
    config: TrainConfig
    spec: TaskSpec
    run_dir: Path
    model: Any  # prepared: DDP-wrapped under several processes, sharded in place by FSDP
    optimizer: Any
    scheduler: Any
    # Prepared by accelerate, whose loaders shard batches and take set_epoch.
    train_loader: DataLoaderShard
    train_sampler: TokenBudgetBatchSampler
    val_loader: DataLoaderShard
    unfreezing: ProgressiveUnfreezing | _NoUnfreezing
    log: TrainingLog
    epochs: int  # training.epochs, or as many as training.max_steps takes
    on_validation: ValidationHook | None = None

    @property
    def unwrapped(self) -> SequenceClassifier:
        """The model itself, whose weights are saved."""
        return self.accelerator.unwrap_model(self.model)


def train(
    config: TrainConfig,
    resume: Path | None = None,
    on_validation: ValidationHook | None = None,
) -> Path:
    """Train a model and return its run directory.

    Args:
        config: The validated configuration (for ``resume``, the one saved in the run).
        resume: A run directory to continue from its newest checkpoint.
        on_validation: Told each validation's epoch and selection metric; returning True stops
            the run after that epoch (how ``esmtune tune`` prunes a poor trial).

    Returns:
        The run directory, holding the best weights, metrics and logs.

    Raises:
        DataError: When the data check finds blocking problems.
        ModelLoadError: When the backbone cannot be loaded.
        RunDirError: When the run directory exists (fresh run) or none of its checkpoints can be
            resumed from (resume).
        StorageError: When the run directory cannot be written (checked before the model is
            loaded) or the disk fills up on the way; the message says where to resume from.
    """
    check_trackers_installed(config.training.trackers)  # before minutes of loading
    accelerator = _make_accelerator(config.training)
    set_seed(config.training.seed)
    detach_run_logs()
    plan = None
    if resume is not None:
        plan = plan_resume(config, resume)
        if plan.finished:  # leave a finished run exactly as it is
            if accelerator.is_main_process:
                print("\n".join(plan.notes))
            return resume

    report, spec = _check_inputs(accelerator, config)
    run_dir = _open_run_dir(accelerator, config, resume, plan)
    checkpoint = plan.point.checkpoint if plan is not None else None
    with storage_errors(run_dir, partial(storage_failure_fix, run_dir)):
        run, state = _set_up(accelerator, config, report, spec, run_dir, checkpoint)
        run.on_validation = on_validation
        finished = None  # a failed run's tracker runs are ended too, without its files
        try:
            started = time.perf_counter()
            _fit(run, state)
            _write_summary(run, state, time.perf_counter() - started)
            finished = run_dir
        finally:
            # Not accelerator.end_training(): it also ends the process group, which a caller
            # (fitting, notebooks, tests) may still use after train() returns.
            finish_trackers(accelerator, finished, _best_scalars(state), state.global_step)
        accelerator.wait_for_everyone()
    return run_dir


def _fit(run: _Run, state: TrainerState) -> None:
    """Epochs of optimizer steps, each epoch (every ``eval_every_epochs``) evaluated and saved."""
    accelerator, training = run.accelerator, run.config.training
    max_grad_norm = training.max_grad_norm or float("inf")  # 0: no clipping, but a logged norm
    while state.epoch < run.epochs and not state.stopped_early:
        run.log.say(run.unfreezing.for_epoch(state.epoch))
        run.model.train()
        run.log.start_epoch(state.epoch, len(run.train_loader), state.batches_done)
        for batch in _remaining_batches(run, state):
            with accelerator.accumulate(run.model):
                logits = run.model(**model_inputs(batch))
                loss = run.spec.loss(logits.float(), batch["target"])
                accelerator.backward(loss)
                if accelerator.sync_gradients:  # masked before clipping: not in the norm either
                    run.unfreezing.mask_gradients()
                    grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), max_grad_norm)
                run.optimizer.step()
                run.scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
            state.batches_done += 1
            run.log.batch(loss, batch)
            if accelerator.sync_gradients:  # an optimizer step ended with this batch
                state.global_step += 1
                learning_rate = run.scheduler.get_last_lr()[0]
                state.add_step_loss(run.log.step(state.global_step, learning_rate, grad_norm))
                if _every(training.checkpoint_every_steps, state.global_step):
                    _save_checkpoint(run, state)
                if state.global_step == training.max_steps:
                    break  # the step budget is spent: this (last) epoch ends here
        run.log.end_epoch()
        state.epoch, state.batches_done = state.epoch + 1, 0
        if _every(training.eval_every_epochs, state.epoch) or state.epoch == run.epochs:
            _evaluate(run, state)
            _save_checkpoint(run, state)


def _remaining_batches(run: _Run, state: TrainerState) -> DataLoader:
    """This epoch's batches, less those done before an interruption."""
    # The prepared loader re-seeds its sampler with its own epoch counter on every pass, which
    # starts at 0 in a resumed process: set it, and our sampler, to the true epoch.
    run.train_loader.set_epoch(state.epoch)
    run.train_sampler.set_epoch(state.epoch)
    if state.batches_done:
        return run.accelerator.skip_first_batches(run.train_loader, state.batches_done)
    return run.train_loader


def _every(interval: int, count: int) -> bool:
    """Whether ``count`` completes an ``interval`` (never when the interval is 0, off)."""
    return interval > 0 and count % interval == 0


# Setup, in the order train() calls it.


def _make_accelerator(training: TrainingConfig) -> Accelerator:
    """One accelerator for one or many processes, on CPUs over gloo when there is no GPU.

    accelerate only picks its multi-CPU mode when told to use the CPU; a launch on a machine
    without GPUs (a laptop, CI, our 2-core machines) otherwise falls back to independent single
    processes that would each train the whole model.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(
        gradient_accumulation_steps=training.gradient_accumulation,
        cpu=world_size > 1 and not torch.accelerator.is_available(),
        mixed_precision=training.mixed_precision,
    )
    shard_on_cpus(accelerator)  # (the same holds for FSDP)
    check_sharding(accelerator)
    return accelerator


def _check_inputs(accelerator: Accelerator, config: TrainConfig) -> tuple[DataReport, TaskSpec]:
    """Check the backbone and the data, then fit the task on the training targets.

    Cheap checks first: a missing model or a bad file should fail before minutes of loading.

    Raises:
        ModelLoadError: When the backbone cannot be found.
        DataError: When the data check finds blocking problems.
    """
    if config.data.embeddings is None:  # (a head on precomputed embeddings has no backbone)
        check_backbone_available(config.model)
    foreign = None
    if config.model.init_from is not None:
        foreign = check_initial_run(config.model.init_from, config.model)
    # Once, on the main process (the others wait for its report): under accelerate launch every
    # process would otherwise read the files and run the MMseqs2 leakage search itself.
    report = Processes(accelerator.state).on_main(
        lambda: check_dataset(config.data, config.task, identity=True)
    )
    if accelerator.is_main_process:
        if foreign:
            print(f"warning: {foreign}")
        print(report.table())
        if report.leakage is not None:
            print("\n".join(report.leakage.report_lines()))
        for line in report.warnings + report.notes:
            print(f"note: {line}")
    report.raise_if_errors()
    spec = build_task(
        config, report.labels, report.splits["train"], report.label_names, report.ancestors
    )
    return report, spec


def _open_run_dir(
    accelerator: Accelerator, config: TrainConfig, resume: Path | None, plan: ResumePlan | None
) -> Path:
    """The run directory, checked writable and logging into its train.log.

    Raises:
        RunDirError: When a fresh run's directory is already taken.
        StorageError: When it cannot be written.
    """
    run_dir = resume if resume is not None else _new_run_dir(accelerator, config)
    # Before the model is loaded: a read-only or full folder is reported in seconds, not hours.
    check_writable(
        run_dir,
        "Choose another output.dir=..."
        if resume is None
        else "Free space or make it writable, or copy the run where it can be written and resume "
        "the copy (`esmtune train --resume COPY`)",
    )
    starts_afresh = plan is not None and plan.point.checkpoint is None
    if starts_afresh and accelerator.is_main_process:
        for unfinished in unfinished_checkpoints(run_dir):
            remove_tree(unfinished)
    accelerator.wait_for_everyone()
    attach_run_log(run_dir, accelerator.is_main_process)
    for note in plan.notes if plan is not None else []:
        say(accelerator, note)
    return run_dir


def _new_run_dir(accelerator: Accelerator, config: TrainConfig) -> Path:
    """Name the run once (on the main process, for all) and refuse to overwrite a folder."""
    name = config.output.name
    if name is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{config.model.name.rstrip('/').split('/')[-1]}-{stamp}"
    chosen = broadcast_object_list([name])[0]
    run_dir = config.output.dir / chosen
    if run_dir.exists() and any(run_dir.iterdir()):
        raise occupied_error(run_dir)
    accelerator.wait_for_everyone()
    return run_dir


def _set_up(
    accelerator: Accelerator,
    config: TrainConfig,
    report: DataReport,
    spec: TaskSpec,
    run_dir: Path,
    checkpoint: Path | None,
) -> tuple[_Run, TrainerState]:
    """Model, optimizer, loaders and schedule, restored from ``checkpoint`` if there is one.

    The order is part of reproducibility: the head's initial weights come from the seeded RNG
    in this order, and a resume restores the RNG last, after everything has been built.
    """
    source: EmbeddingSource | None = None
    unfreezing: ProgressiveUnfreezing | _NoUnfreezing = _NoUnfreezing()
    if config.data.embeddings is not None:  # a head on precomputed embeddings: no backbone
        found, train_loader, train_sampler, val_loader = make_embedding_loaders(
            accelerator, config, report, spec
        )
        source = EmbeddingSource(found.dim, found.per_residue, str(found.path), found.metadata)
        model: SequenceClassifier | EmbeddingClassifier = EmbeddingClassifier(
            source, spec.num_outputs, config
        )
        tokenizer = None
    else:
        model, tokenizer = build_model(config, spec.num_outputs)
        if checkpoint is None and config.model.init_from is not None:
            say(accelerator, initialise_from(model, config.model.init_from, config.model.init_skip))
        train_loader, train_sampler, val_loader = make_loaders(
            accelerator, config, report, tokenizer, spec, model
        )
    steps_per_epoch = math.ceil(
        len(train_loader) // accelerator.num_processes / config.training.gradient_accumulation
    )
    epochs = _epochs(config.training, steps_per_epoch)
    if isinstance(model, SequenceClassifier):
        unfreezing = ProgressiveUnfreezing(
            model.backbone, config.finetune, epochs, accelerator.num_processes
        )
    parameters = count_parameters(model)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config))
    splits = report.splits
    sizes = f"{len(splits['train'])} train / {len(splits['validation'])} validation sequences"
    scheduler = _learning_rate_schedule(
        optimizer, config.training, steps_per_epoch * epochs, accelerator.num_processes
    )
    if note := single_checkpointing(accelerator, model):
        say(accelerator, note)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    if checkpoint is None:
        state = TrainerState()
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            backbone_config = getattr(unwrapped, "backbone_config", None)  # (none: embeddings)
            _write_run_files(
                accelerator, config, report, spec, run_dir, tokenizer, backbone_config, parameters
            )
            if source is not None:
                source.save(run_dir)
    else:
        state = load_checkpoint(
            accelerator, checkpoint, accelerator.unwrap_model(model), optimizer, scheduler
        )
        if state.epoch < epochs and not state.stopped_early:
            where = f"epoch {state.epoch + 1}, step {state.global_step}"
            say(accelerator, f"resuming from {checkpoint} ({where})")

    start_trackers(accelerator, config, run_dir)
    log = TrainingLog(accelerator, epochs)
    trainable, total = parameters
    log.say(
        f"run directory: {run_dir}\nparameters: {trainable:,} trainable of {total:,} "
        f"({config.finetune.mode.value}); {sizes}; {accelerator.num_processes} process(es), "
        f"mixed precision: {accelerator.mixed_precision}"
    )
    run = _Run(
        accelerator, config, spec, run_dir, model, optimizer, scheduler,
        train_loader, train_sampler, val_loader, unfreezing, log, epochs,
    )  # fmt: skip
    return run, state


def _parameter_groups(
    model: SequenceClassifier | EmbeddingClassifier, config: TrainConfig
) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and norms; the head may have its own rate."""
    training = config.training
    head_ids = {id(p) for p in model.head_parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decays = parameter.ndim >= 2 and "norm" not in name.lower()
        groups.setdefault((id(parameter) in head_ids, decays), []).append(parameter)
    head_rate = training.head_learning_rate or training.learning_rate
    return [
        {
            "params": params,
            "lr": head_rate if is_head else training.learning_rate,
            "weight_decay": training.weight_decay if decays else 0.0,
        }
        for (is_head, decays), params in sorted(groups.items())
    ]


def _epochs(training: TrainingConfig, steps_per_epoch: int) -> int:
    """training.epochs, or the epochs training.max_steps needs (the last one may be partial)."""
    if training.max_steps is None:
        return training.epochs
    return math.ceil(training.max_steps / steps_per_epoch)


def _learning_rate_schedule(
    optimizer: torch.optim.Optimizer, training: TrainingConfig, epoch_steps: int, processes: int
) -> Any:
    """Warmup, then the configured decay, over the run's optimizer steps.

    ``epoch_steps``: optimizer steps of all the run's epochs on each process, counted from the
    real loader (not estimated from the data size); ``training.max_steps`` caps them.
    """
    steps = min(epoch_steps, training.max_steps or epoch_steps)
    # accelerate steps a prepared scheduler once per process for every optimizer step.
    total = steps * processes
    name = "constant_with_warmup" if training.scheduler == "constant" else training.scheduler
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=round(training.warmup_ratio * total),
        num_training_steps=total,
    )


def _write_run_files(
    accelerator: Accelerator,
    config: TrainConfig,
    report: DataReport,
    spec: TaskSpec,
    run_dir: Path,
    tokenizer: Any,
    backbone_config: PretrainedConfig | None,
    parameters: tuple[int, int],
) -> None:
    """What describes a fresh run before its first step: config, labels, manifest, data check."""
    trainable, total = parameters
    manifest = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "data": {
            "path": str(config.data.path),
            "layout": report.layout,
            "counts": report.summary(),
            "leakage_by_identity": None if report.leakage is None else report.leakage.summary(),
        },
        "data_notes": report.warnings + report.notes,
        "parameters": {"trainable": trainable, "total": total},
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    }
    save_run_files(run_dir, config, spec, tokenizer, backbone_config, manifest)
    checked = [report.table()]
    if report.leakage is not None:
        checked += report.leakage.report_lines()
        text = io.StringIO()
        report.leakage.write(text)
        atomic_write_text(run_dir / LEAKAGE_FILE, text.getvalue())
    atomic_write_text(run_dir / "data_check.txt", "\n".join(checked) + "\n")


# Evaluation, checkpoints and the summary.


def _evaluate(run: _Run, state: TrainerState) -> None:
    """Validate; keep the best weights with their thresholds; decide on early stopping."""
    stopping = run.config.training.early_stopping
    name = run.config.selection_metric
    metrics, thresholds, calibration = _validate(run)
    scalars = _scalars(run.config, metrics)
    train_loss = state.take_train_loss()
    state.history.append(
        {"epoch": state.epoch, "step": state.global_step, "train_loss": train_loss, **scalars}
    )
    improved = is_improvement(name, metrics.get(name), state.best_value, stopping.min_delta)
    if improved:
        state.best_value, state.best_epoch = metrics.get(name), state.epoch
        state.best_thresholds, state.evals_without_improvement = thresholds, 0
        state.best_calibration = calibration
        _save_best(run, state, metrics)
    else:
        state.evals_without_improvement += 1
    if run.accelerator.is_main_process:
        curves = run.run_dir / "training_curves.png"
        plot_training_curves(state.history, name, curves, state.best_epoch)
    run.log.validation(state.epoch, state.global_step, scalars, improved)
    if run.on_validation is not None and run.on_validation(state.epoch, metrics.get(name)):
        state.stopped_early = True
        run.log.say(f"stopped after epoch {state.epoch} by the caller (a pruned trial)")
    elif stopping.patience and state.evals_without_improvement >= stopping.patience:
        state.stopped_early = True
        run.log.say(
            f"early stopping: validation {name} has not improved for "
            f"{stopping.patience} evaluation(s); best was epoch {state.best_epoch}"
        )


def _validate(
    run: _Run,
) -> tuple[dict[str, Any], list[float] | None, dict[str, Any] | None]:
    """Metrics on the validation split, calibrated and with thresholds tuned on it.

    The calibration is fitted first and the thresholds on the calibrated probabilities, which
    are what predictions will use. The same on every process.
    """
    run.model.eval()
    pieces = list(iterate_outputs(run.model, run.val_loader, run.spec.outputs))
    gathered = gather_object(pieces)
    run.model.train()
    by_index: dict[int, np.ndarray] = {}
    for indices, outputs in gathered:
        by_index.update(zip(indices.tolist(), outputs, strict=True))  # drops padding duplicates
    dataset: BudgetedDataset = run.val_loader.dataset
    if dataset.targets is None:  # encode_split encodes them for every split
        raise RuntimeError("the validation set was encoded without its targets")
    outputs = sequence_rows([by_index[i] for i in range(len(dataset))])
    if dataset.residue_targets:  # per residue: outputs over whole chains, unread residues NaN
        assert isinstance(dataset, EncodedDataset | CachedResidueStates)
        lengths = [len(target) for target in dataset.targets]
        outputs = place_residues(outputs, dataset.starts, lengths)
    calibration = None
    if run.config.objective.calibrate:
        calibration = run.spec.fit_calibration(dataset.targets, outputs)
    if calibration is not None:
        outputs = run.spec.calibrated(outputs, calibration)
    thresholds = run.spec.tune(dataset.targets, outputs)
    return run.spec.metrics(dataset.targets, outputs, thresholds), thresholds, calibration


def _scalars(config: TrainConfig, metrics: dict[str, Any]) -> dict[str, float]:
    """The task's selectable metrics that are defined, for history, logs and trackers."""
    return {
        name: float(metrics[name])
        for name in TASK_METRICS[config.task]
        if metrics.get(name) is not None
    }


def _best_scalars(state: TrainerState) -> dict[str, float]:
    """The best evaluation's validation metrics as ``best/<name>``, with ``best/epoch``."""
    best = next((entry for entry in state.history if entry["epoch"] == state.best_epoch), None)
    if best is None:  # no evaluation has scored yet (or none defined the metric)
        return {}
    scalars = {
        f"best/{name}": float(value)
        for name, value in best.items()
        if name not in {"epoch", "step", "train_loss"} and value is not None
    }
    return {**scalars, "best/epoch": float(best["epoch"])}


def _save_best(run: _Run, state: TrainerState, metrics: dict[str, Any]) -> None:
    """The best weights so far, with the thresholds tuned for them, and their metrics."""
    # Whole tensors, also under FSDP (every process takes part in gathering its slices).
    weights = gathered(kept_tensors(run.unwrapped, run.config), run.accelerator.is_main_process)
    if not run.accelerator.is_main_process:
        return
    save_weights(weights, run.run_dir / WEIGHTS_FILE, state.best_thresholds, state.best_calibration)
    atomic_write_text(
        run.run_dir / "model" / "best_validation_metrics.json",
        json.dumps({"epoch": state.epoch, **metrics}, indent=2) + "\n",
    )


def _save_checkpoint(run: _Run, state: TrainerState) -> None:
    """Everything the next step depends on, so a resumed run ends exactly where this one would."""
    save_checkpoint(
        run.accelerator, run.run_dir, kept_tensors(run.unwrapped, run.config),
        run.optimizer, run.scheduler, state, run.config.training.keep_checkpoints,
    )  # fmt: skip


def _write_summary(run: _Run, state: TrainerState, seconds: float) -> None:
    """metrics.json (best epoch, value and thresholds, history) and the closing line."""
    if not run.accelerator.is_main_process:
        return
    name = run.config.selection_metric
    summary = {
        "task": run.config.task.value,
        "selection_metric": name,
        "best_epoch": state.best_epoch,
        "best_value": state.best_value,
        "thresholds": state.best_thresholds,
        "calibration": state.best_calibration,
        "epochs_run": state.epoch,
        "optimizer_steps": state.global_step,
        "stopped_early": state.stopped_early,
        "history": state.history,
        "last_session_seconds": round(seconds, 1),
    }
    atomic_write_text(run.run_dir / METRICS_FILE, json.dumps(summary, indent=2) + "\n")
    best = "undefined" if state.best_value is None else f"{state.best_value:.4f}"
    run.log.say(
        f"done: best validation {name} {best} at epoch "
        f"{state.best_epoch}; weights in {run.run_dir / WEIGHTS_FILE}"
    )
