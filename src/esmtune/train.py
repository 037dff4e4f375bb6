"""Training: check the data, build the model, fit with accelerate, keep the best weights.

Read top to bottom: :func:`train` sets up, :func:`_fit` runs ``for epoch`` / ``for batch``,
evaluation and checkpointing are calls with their own names. The same code runs on one CPU or
under ``accelerate launch`` with several processes; mixed precision and the number of processes
come from the accelerate config.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from esmtune.checkpoint import (
    TrainerState,
    load_checkpoint,
    occupied_error,
    plan_resume,
    remove_tree,
    save_checkpoint,
    storage_failure_fix,
    unfinished_checkpoints,
)
from esmtune.config import TASK_METRICS, FinetuneMode, Pooling, TrainConfig
from esmtune.data.batching import EncodedDataset, TokenBudgetBatchSampler, encode, pad_collate
from esmtune.data.check import DataReport, check_dataset
from esmtune.embeddings import (
    EmbeddedDataset,
    EmbeddingCache,
    embedding_collate,
    pooled_embeddings,
)
from esmtune.inference import eval_loader, iterate_outputs, model_inputs
from esmtune.metrics import is_improvement
from esmtune.model.backbone import check_backbone_available
from esmtune.model.classifier import SequenceClassifier, build_model
from esmtune.model.run_model import weights_to_save
from esmtune.model.tuning import (
    backbone_layers,
    count_parameters,
    parameters_to_mask,
    set_unfrozen_layers,
    unfrozen_layers_at,
)
from esmtune.plots import plot_training_curves
from esmtune.rundir import (
    METRICS_FILE,
    WEIGHTS_FILE,
    atomic_write_text,
    save_run_files,
    save_weights,
)
from esmtune.storage import check_writable, storage_errors
from esmtune.tasks import TaskSpec, build_task

__all__ = ["encode_split", "train"]

logger = logging.getLogger("esmtune")


def encode_split(
    report: DataReport, split: str, tokenizer: Any, config: TrainConfig, spec: TaskSpec
) -> EncodedDataset:
    """Token windows and encoded targets of one split."""
    records = report.splits[split]
    data = config.data
    windows = encode(
        tokenizer, [r.sequence for r in records], data.max_length, data.long_sequences,
        data.window_stride,
    )  # fmt: skip
    return EncodedDataset(windows, spec.encode_targets(records))


@dataclass
class _Run:
    """Everything the loop needs, made once by :func:`train`."""

    accelerator: Accelerator
    config: TrainConfig
    spec: TaskSpec
    run_dir: Path
    labels: list[str]
    model: Any
    optimizer: Any
    scheduler: Any
    train_loader: DataLoader
    train_sampler: TokenBudgetBatchSampler
    val_loader: DataLoader
    masked_parameters: list[torch.nn.Parameter]
    writer: Any


def _resolve_run_dir(accelerator: Accelerator, config: TrainConfig, resume: Path | None) -> Path:
    """Choose the run directory once (on the main process) and refuse to overwrite one."""
    if resume is not None:
        return resume
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


def _parameter_groups(model: SequenceClassifier, config: TrainConfig) -> list[dict[str, Any]]:
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


def _caches_embeddings(config: TrainConfig) -> bool:
    """Frozen backbone and a pooling without parameters: the pooled embedding never changes."""
    return (
        config.finetune.mode is FinetuneMode.FROZEN
        and config.finetune.cache_embeddings
        and config.model.pooling is not Pooling.ATTENTION
    )


def _embed_once(
    accelerator: Accelerator,
    model: SequenceClassifier,
    pad_token_id: int,
    config: TrainConfig,
    report: DataReport,
    datasets: dict[str, EncodedDataset],
) -> dict[str, EmbeddedDataset]:
    """Pooled embeddings of every split, from the cache or computed once (main process)."""
    root = config.finetune.cache_dir or (
        Path(os.environ.get("ESMTUNE_CACHE", "~/.cache/esmtune")).expanduser() / "embeddings"
    )
    cache = EmbeddingCache.for_run(root, model, config)
    model.to(accelerator.device)
    embedded = {}
    for split, dataset in datasets.items():
        sequences = [r.sequence for r in report.splits[split]]

        def compute(missing: list[int], dataset: EncodedDataset = dataset) -> torch.Tensor:
            subset = EncodedDataset([dataset.windows[i] for i in missing])
            return pooled_embeddings(
                model, subset, pad_token_id, None, progress=accelerator.is_main_process
            )

        started = time.perf_counter()
        computed = 0
        if accelerator.is_main_process:
            embeddings, computed = cache.fetch(sequences, compute)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            embeddings, _ = cache.fetch(sequences, compute)  # written by the main process
        _say(
            accelerator,
            f"{split}: {computed} embedding(s) computed, {len(sequences) - computed} read from "
            f"the cache {cache.folder} ({time.perf_counter() - started:.1f} s)",
        )
        embedded[split] = EmbeddedDataset(embeddings, dataset)
    return embedded


def _make_loaders(
    accelerator: Accelerator,
    config: TrainConfig,
    report: DataReport,
    tokenizer: Any,
    spec: TaskSpec,
    model: SequenceClassifier,
) -> tuple[DataLoader, TokenBudgetBatchSampler, DataLoader]:
    """Encoded (or, frozen, embedded) train and validation sets behind token-budget loaders."""
    train_set: EncodedDataset | EmbeddedDataset = encode_split(
        report, "train", tokenizer, config, spec
    )
    val_set: EncodedDataset | EmbeddedDataset = encode_split(
        report, "validation", tokenizer, config, spec
    )
    if _caches_embeddings(config):
        # The backbone's only work: from here on the head trains on cached embeddings.
        splits = {"train": train_set, "validation": val_set}
        embedded = _embed_once(accelerator, model, tokenizer.pad_token_id, config, report, splits)
        train_set, val_set = embedded["train"], embedded["validation"]
    processes = accelerator.num_processes
    train_loader, train_sampler = _make_train_loader(
        train_set, config, tokenizer.pad_token_id, processes
    )
    val_loader = eval_loader(
        val_set, config.training.max_tokens, tokenizer.pad_token_id,
        max_sequences=config.training.batch_size, num_replicas=processes,
        collate_fn=_collate(val_set, tokenizer.pad_token_id),
    )  # fmt: skip
    return train_loader, train_sampler, val_loader


def _make_train_loader(
    dataset: EncodedDataset | EmbeddedDataset,
    config: TrainConfig,
    pad_token_id: int,
    processes: int,
) -> tuple[DataLoader, TokenBudgetBatchSampler]:
    training = config.training
    sampler = TokenBudgetBatchSampler(
        dataset.tokens,
        training.max_tokens,
        shuffle=True,
        seed=training.seed,
        window_counts=dataset.window_counts,
        max_sequences=training.batch_size,
        num_replicas=processes,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=_collate(dataset, pad_token_id),
        num_workers=training.num_workers,
        # Its own generator: creating an iterator then draws no number from the global RNG, so a
        # resumed run (which creates one more iterator) keeps the same dropout masks.
        generator=torch.Generator().manual_seed(training.seed),
    )
    return loader, sampler


def _collate(dataset: EncodedDataset | EmbeddedDataset, pad_token_id: int) -> Any:
    if isinstance(dataset, EmbeddedDataset):
        return embedding_collate
    return partial(pad_collate, pad_token_id=pad_token_id)


class _RunLog(logging.FileHandler):
    """train.log; once it cannot be written (a full disk), one warning, not a traceback a line.

    The write that fails for real (weights, checkpoint) then reports the problem and the fix.
    """

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        """Warn once, then stay quiet."""
        if not self.failed:
            self.failed = True
            print(f"warning: {self.baseFilename} can no longer be written", file=sys.stderr)


def _detach_file_logs() -> None:
    """Stop logging into an earlier train()'s train.log (same process, e.g. tests, notebooks)."""
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        handler.close()


def _setup_logging(run_dir: Path, is_main: bool) -> None:
    """Log to this run's train.log (appending on resume), and to no earlier run's."""
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    _detach_file_logs()
    if is_main:
        handler = _RunLog(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)


def _say(accelerator: Accelerator, message: str) -> None:
    """Print on the main process (above any progress bar) and keep it in train.log."""
    if accelerator.is_main_process:
        tqdm.write(message)
        logger.info(message)


def _distributed_without_devices() -> bool:
    """Several processes and no accelerator device: train on CPUs over gloo.

    accelerate only picks its multi-CPU mode when told to use the CPU; a launch on a machine
    without GPUs (a laptop, CI, our 2-core machines) otherwise falls back to independent
    single processes that would each train the whole model.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return world_size > 1 and not torch.accelerator.is_available()


def train(config: TrainConfig, resume: Path | None = None) -> Path:
    """Train a model and return its run directory.

    Args:
        config: The validated configuration (for ``resume``, the one saved in the run).
        resume: A run directory to continue from its newest checkpoint.

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
    accelerator = Accelerator(
        gradient_accumulation_steps=config.training.gradient_accumulation,
        cpu=_distributed_without_devices(),
        mixed_precision=config.training.mixed_precision,
    )
    set_seed(config.training.seed)
    _detach_file_logs()

    plan = plan_resume(config, resume) if resume is not None else None
    if plan is not None and plan.finished:
        if accelerator.is_main_process:
            print("\n".join(plan.notes))
        return resume

    # Cheap checks first: a missing model or a bad file should fail before minutes of loading.
    check_backbone_available(config.model)
    report = check_dataset(config.data, config.task)
    if accelerator.is_main_process:
        print(report.table())
        for line in report.warnings + report.notes:
            print(f"note: {line}")
    report.raise_if_errors()
    spec = build_task(
        config, report.labels, report.splits["train"], report.label_names, report.ancestors
    )

    run_dir = _resolve_run_dir(accelerator, config, resume)
    # Before the model is loaded: a read-only or full folder is reported in seconds, not hours.
    check_writable(
        run_dir,
        "Choose another output.dir=..."
        if resume is None
        else "Free space or make it writable, or copy the run where it can be written and resume "
        "the copy (`esmtune train --resume COPY`)",
    )
    checkpoint = plan.point.checkpoint if plan is not None else None
    if plan is not None and checkpoint is None and accelerator.is_main_process:
        for unfinished in unfinished_checkpoints(run_dir):
            remove_tree(unfinished)
    accelerator.wait_for_everyone()
    _setup_logging(run_dir, accelerator.is_main_process)
    for note in plan.notes if plan is not None else []:
        _say(accelerator, note)
    with storage_errors(run_dir, partial(storage_failure_fix, run_dir)):
        _setup_and_fit(accelerator, config, report, spec, run_dir, checkpoint)
    return run_dir


def _setup_and_fit(
    accelerator: Accelerator,
    config: TrainConfig,
    report: DataReport,
    spec: TaskSpec,
    run_dir: Path,
    checkpoint: Path | None,
) -> None:
    """Model, optimizer, loaders and schedule (restored from ``checkpoint`` if any), then fit."""
    model, tokenizer = build_model(config, spec.num_outputs)
    num_layers = len(backbone_layers(model.backbone))
    masked: list[torch.nn.Parameter] = []
    if config.finetune.mode is FinetuneMode.PARTIAL:
        # Every layer that will ever train joins the optimizer now, so its state dict (and resume)
        # never changes shape; which of them may move is decided each epoch in _fit.
        most = unfrozen_layers_at(config.finetune, config.training.epochs - 1, num_layers)
        set_unfrozen_layers(model.backbone, most)
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config))
    if config.finetune.mode is FinetuneMode.PARTIAL and accelerator.num_processes == 1:
        set_unfrozen_layers(model.backbone, unfrozen_layers_at(config.finetune, 0, num_layers))
    elif config.finetune.mode is FinetuneMode.PARTIAL:
        masked = parameters_to_mask(
            model.backbone, unfrozen_layers_at(config.finetune, 0, num_layers)
        )

    train_loader, train_sampler, val_loader = _make_loaders(
        accelerator, config, report, tokenizer, spec, model
    )
    train_set, val_set = train_loader.dataset, val_loader.dataset
    # The schedule counts optimizer steps over all processes, from the real loader length.
    steps_per_epoch = math.ceil(len(train_loader) / config.training.gradient_accumulation)
    total_steps = steps_per_epoch * config.training.epochs
    scheduler = get_scheduler(
        "constant_with_warmup"
        if config.training.scheduler == "constant"
        else config.training.scheduler,
        optimizer,
        num_warmup_steps=round(config.training.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )

    if checkpoint is None:
        state = TrainerState()
        if accelerator.is_main_process:
            save_run_files(
                run_dir,
                config,
                spec,
                tokenizer,
                accelerator.unwrap_model(model).backbone,
                {
                    "created": datetime.now().isoformat(timespec="seconds"),
                    "data": {
                        "path": str(config.data.path),
                        "layout": report.layout,
                        "counts": report.summary(),
                    },
                    "data_notes": report.warnings + report.notes,
                    "parameters": {"trainable": trainable, "total": total},
                    "processes": accelerator.num_processes,
                    "mixed_precision": accelerator.mixed_precision,
                },
            )
            atomic_write_text(run_dir / "data_check.txt", report.table() + "\n")
    else:
        state = load_checkpoint(
            accelerator, checkpoint, accelerator.unwrap_model(model), optimizer, scheduler
        )
        if state.best_epoch is not None:  # the thresholds of the best weights so far
            spec.thresholds = state.best_thresholds
        if state.epoch < config.training.epochs and not state.stopped_early:
            _say(
                accelerator,
                f"resuming from {checkpoint} (epoch {state.epoch + 1}, step {state.global_step})",
            )

    writer = None
    if accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    _say(
        accelerator,
        f"run directory: {run_dir}\nparameters: {trainable:,} trainable of {total:,} "
        f"({config.finetune.mode.value}); {len(train_set)} train / {len(val_set)} validation "
        f"sequences; {accelerator.num_processes} process(es), "
        f"mixed precision: {accelerator.mixed_precision}",
    )
    run = _Run(
        accelerator, config, spec, run_dir, report.labels, model, optimizer, scheduler,
        train_loader, train_sampler, val_loader, masked, writer,
    )  # fmt: skip
    _fit(run, state, num_layers)
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()


def _fit(run: _Run, state: TrainerState, num_layers: int) -> None:
    """The loop: epochs of optimizer steps, evaluation and checkpoints; then the final summary."""
    accelerator, config = run.accelerator, run.config
    training = config.training
    unwrapped: SequenceClassifier = accelerator.unwrap_model(run.model)
    started = time.perf_counter()
    while state.epoch < training.epochs and not state.stopped_early:
        epoch = state.epoch
        _unfreeze_for_epoch(run, unwrapped, epoch, num_layers)
        # The prepared loader re-seeds its sampler with its own epoch counter on every pass, which
        # starts at 0 in a resumed process: set it, and our sampler, to the true epoch.
        run.train_loader.set_epoch(epoch)
        run.train_sampler.set_epoch(epoch)
        loader = run.train_loader
        if state.batches_done:
            loader = accelerator.skip_first_batches(run.train_loader, state.batches_done)
        run.model.train()
        _train_one_epoch(run, unwrapped, state, loader)
        state.epoch, state.batches_done = epoch + 1, 0

        last_epoch = state.epoch == training.epochs
        if state.epoch % training.eval_every_epochs == 0 or last_epoch:
            metrics, thresholds = _validate(run)
            _select_best(run, unwrapped, state, metrics, thresholds)
            save_checkpoint(
                accelerator, run.run_dir, weights_to_save(unwrapped, config),
                run.optimizer, run.scheduler, state, training.keep_checkpoints,
            )  # fmt: skip
    _write_metrics(run, state, time.perf_counter() - started)


def _unfreeze_for_epoch(run: _Run, model: SequenceClassifier, epoch: int, layers: int) -> None:
    """Progressive unfreezing: from this epoch on, this many final layers train."""
    finetune = run.config.finetune
    if finetune.mode is not FinetuneMode.PARTIAL:
        return
    count = unfrozen_layers_at(finetune, epoch, layers)
    if run.accelerator.num_processes == 1:
        set_unfrozen_layers(model.backbone, count)
    else:
        run.masked_parameters = parameters_to_mask(model.backbone, count)
    if finetune.unfreeze_every_epochs:
        _say(run.accelerator, f"epoch {epoch + 1}: the last {count} of {layers} layers train")


def _train_one_epoch(
    run: _Run, model: SequenceClassifier, state: TrainerState, loader: DataLoader
) -> None:
    accelerator, config = run.accelerator, run.config
    training = config.training
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    bar = tqdm(
        total=len(run.train_loader),
        initial=state.batches_done,
        desc=f"epoch {state.epoch + 1}/{training.epochs}",
        unit="batch",
        disable=not accelerator.is_main_process,
        dynamic_ncols=True,
        mininterval=0.2 if sys.stderr.isatty() else 15.0,  # logs get a line every 15 s, not 10/s
    )
    # Loss and residue counts stay on the device and are read once per optimizer step: reading
    # them every batch would force a GPU sync each time.
    window_loss = torch.zeros((), device=accelerator.device)
    residues = torch.zeros((), device=accelerator.device)
    window_batches, tick = 0, time.perf_counter()
    for batch in loader:
        with accelerator.accumulate(run.model):
            logits = run.model(**model_inputs(batch))
            loss = run.spec.loss(logits.float(), batch["target"])
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                for parameter in run.masked_parameters:
                    parameter.grad = None  # not unfrozen yet (multi-process progressive mode)
                norm_limit = training.max_grad_norm or float("inf")
                grad_norm = accelerator.clip_grad_norm_(trainable, norm_limit)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        state.batches_done += 1
        window_loss += loss.detach()
        window_batches += 1
        if "attention_mask" in batch:  # (cached embeddings have no residues to count)
            residues += batch["attention_mask"].sum() - 2 * len(batch["input_ids"])
        bar.update(1)
        if not accelerator.sync_gradients:
            continue
        state.global_step += 1
        step_loss = accelerator.reduce(window_loss / window_batches, "mean").item()
        state.epoch_loss_sum += step_loss
        state.epoch_steps += 1
        seconds = max(time.perf_counter() - tick, 1e-9)
        rate = residues.item() * accelerator.num_processes / seconds
        bar.set_postfix(loss=f"{step_loss:.4f}", res_per_s=f"{rate:,.0f}")
        if run.writer is not None:
            run.writer.add_scalar("train/loss", step_loss, state.global_step)
            run.writer.add_scalar(
                "train/learning_rate", run.scheduler.get_last_lr()[0], state.global_step
            )
            run.writer.add_scalar("train/grad_norm", float(grad_norm), state.global_step)
            run.writer.add_scalar("train/residues_per_second", rate, state.global_step)
        window_loss.zero_()
        residues.zero_()
        window_batches, tick = 0, time.perf_counter()
        every = training.checkpoint_every_steps
        if every and state.global_step % every == 0:
            save_checkpoint(
                accelerator, run.run_dir, weights_to_save(model, config),
                run.optimizer, run.scheduler, state, training.keep_checkpoints,
            )  # fmt: skip
    bar.close()


def _validate(run: _Run) -> tuple[dict[str, Any], list[float] | None]:
    """Metrics on the validation split, with thresholds tuned on it; the same on every process."""
    run.model.eval()
    pieces = list(iterate_outputs(run.model, run.val_loader, run.spec.outputs))
    gathered = gather_object(pieces)
    run.model.train()
    by_index: dict[int, np.ndarray] = {}
    for indices, outputs in gathered:
        by_index.update(zip(indices.tolist(), outputs, strict=True))  # drops padding duplicates
    dataset: EncodedDataset = run.val_loader.dataset
    outputs = np.stack([by_index[i] for i in range(len(dataset))])
    thresholds = run.spec.tune(dataset.targets, outputs)
    return run.spec.metrics(dataset.targets, outputs, thresholds), thresholds


def _scalars(run: _Run, metrics: dict[str, Any]) -> dict[str, float]:
    """The task's selectable metrics that are defined, for history, logs and TensorBoard."""
    return {
        name: float(metrics[name])
        for name in TASK_METRICS[run.config.task]
        if metrics.get(name) is not None
    }


def _select_best(
    run: _Run,
    model: SequenceClassifier,
    state: TrainerState,
    metrics: dict[str, Any],
    thresholds: list[float] | None,
) -> None:
    """Keep the best weights (with their thresholds), record history, decide on early stopping."""
    stopping = run.config.training.early_stopping
    name = run.config.selection_metric
    value = metrics.get(name)
    summary = _scalars(run, metrics)
    train_loss = state.epoch_loss_sum / state.epoch_steps if state.epoch_steps else None
    state.history.append(
        {"epoch": state.epoch, "step": state.global_step, "train_loss": train_loss, **summary}
    )
    state.epoch_loss_sum, state.epoch_steps = 0.0, 0
    improved = is_improvement(name, value, state.best_value, stopping.min_delta)
    if improved:
        state.best_value, state.best_epoch, state.evals_without_improvement = value, state.epoch, 0
        state.best_thresholds = run.spec.thresholds = thresholds
        if run.accelerator.is_main_process:
            save_weights(weights_to_save(model, run.config), run.run_dir / WEIGHTS_FILE, thresholds)
            atomic_write_text(
                run.run_dir / "model" / "best_validation_metrics.json",
                json.dumps({"epoch": state.epoch, **metrics}, indent=2) + "\n",
            )
    else:
        state.evals_without_improvement += 1
    if run.accelerator.is_main_process:
        plot_training_curves(
            state.history, name, run.run_dir / "training_curves.png", state.best_epoch
        )
    if run.writer is not None:
        for key, number in summary.items():
            run.writer.add_scalar(f"validation/{key}", number, state.global_step)
    marker = " (best so far)" if improved else ""
    numbers = "  ".join(f"{k} {v:.4f}" for k, v in summary.items())
    _say(run.accelerator, f"epoch {state.epoch} validation: {numbers}{marker}")
    if stopping.patience and state.evals_without_improvement >= stopping.patience:
        state.stopped_early = True
        _say(
            run.accelerator,
            f"early stopping: validation {name} has not improved for "
            f"{stopping.patience} evaluation(s); best was epoch {state.best_epoch}",
        )


def _write_metrics(run: _Run, state: TrainerState, seconds: float) -> None:
    if not run.accelerator.is_main_process:
        return
    name = run.config.selection_metric
    summary = {
        "task": run.config.task.value,
        "selection_metric": name,
        "best_epoch": state.best_epoch,
        "best_value": state.best_value,
        "thresholds": run.spec.thresholds,
        "epochs_run": state.epoch,
        "optimizer_steps": state.global_step,
        "stopped_early": state.stopped_early,
        "history": state.history,
        "last_session_seconds": round(seconds, 1),
    }
    atomic_write_text(run.run_dir / METRICS_FILE, json.dumps(summary, indent=2) + "\n")
    best = "undefined" if state.best_value is None else f"{state.best_value:.4f}"
    _say(
        run.accelerator,
        f"done: best validation {name} {best} at epoch "
        f"{state.best_epoch}; weights in {run.run_dir / WEIGHTS_FILE}",
    )
