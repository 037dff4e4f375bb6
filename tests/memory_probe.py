"""Peak memory of real training steps on the CPU, one shape after another (run as a script).

Run in a fresh process with ``MALLOC_MMAP_THRESHOLD_`` set low, so that glibc gives every large
tensor its own mapping and returns it when freed: resident memory then follows live tensors, as
a GPU allocator's peak does. Before each shape the kernel's peak-RSS counter is reset (writing 5
to /proc/self/clear_refs); the shape's figure is the peak (VmHWM) minus the resident size before
its model was built, over two forward + backward + AdamW steps.
"""

from __future__ import annotations

import gc
import json
import sys

import torch
from torch import nn
from transformers import EsmModel

from esmtune.config import FinetuneConfig, FinetuneMode
from esmtune.model.backbone import build_esm2_config
from esmtune.model.tuning import apply_finetuning


def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(key))
    return int(line.split()[1]) * 1024


def _train(shape: dict, steps: int = 2) -> None:
    config = build_esm2_config(shape["layers"], shape["hidden"], shape["heads"])
    config._attn_implementation = shape["attention"]
    backbone = EsmModel(config, add_pooling_layer=False)
    mode = FinetuneMode(shape["mode"])
    if shape["checkpointing"]:
        backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        if mode is FinetuneMode.LORA:
            backbone.enable_input_require_grads()
    last = shape.get("trained_layers", 0) if mode is FinetuneMode.PARTIAL else 0
    model = apply_finetuning(backbone, FinetuneConfig(mode=mode, unfreeze_last_layers=last))
    head = nn.Linear(shape["hidden"], 2)
    trained = [p for p in [*model.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    model.train()
    # A batch filled to the token budget with sequences of the longest length: the worst batch.
    ids = torch.randint(4, 24, (shape["max_tokens"] // shape["length"], shape["length"]))
    labels = torch.randint(0, 2, (ids.shape[0],))
    # Mixed precision as accelerate applies it: autocast around the forward and the loss.
    half = shape.get("precision", "no") != "no"
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            states = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            loss = nn.functional.cross_entropy(head(states.mean(1)), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del states, loss


def main() -> None:
    torch.set_num_threads(1)
    shapes = json.loads(sys.argv[1])
    warm = {"layers": 1, "hidden": 16, "heads": 2, "max_tokens": 64, "length": 32}
    measured = []
    for shape in shapes:
        _train({**shape, **warm})  # loads this path's kernels before measuring
        gc.collect()
        before = _status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the peak resident size
        _train(shape)
        measured.append(_status("VmHWM:") - before)
        gc.collect()
    print(json.dumps(measured))


if __name__ == "__main__":
    main()
