"""Checkpoints and resuming: what a run keeps to continue exactly, and how it continues.

``files`` writes and checks checkpoints (safetensors + JSON, never pickle; written whole or not
at all, with a manifest of file sizes); ``statefile`` stores nested optimizer, scheduler and RNG
state without pickle; ``sharded`` gathers and checkpoints a model sharded by FSDP, slice by
slice; ``resume`` decides what ``esmtune train`` does with an existing folder.
"""

from esmtune.checkpoint.files import (
    CHECKPOINTS_DIR,
    ResumePoint,
    TrainerState,
    find_resume_point,
    latest_checkpoint,
    load_checkpoint,
    remove_tree,
    resume_hint,
    save_checkpoint,
    unfinished_checkpoints,
)
from esmtune.checkpoint.resume import (
    ResumePlan,
    occupied_error,
    plan_resume,
    storage_failure_fix,
)
from esmtune.checkpoint.sharded import gathered

__all__ = [
    "CHECKPOINTS_DIR",
    "ResumePlan",
    "ResumePoint",
    "TrainerState",
    "find_resume_point",
    "gathered",
    "latest_checkpoint",
    "load_checkpoint",
    "occupied_error",
    "plan_resume",
    "remove_tree",
    "resume_hint",
    "save_checkpoint",
    "storage_failure_fix",
    "unfinished_checkpoints",
]
