"""The published ESM2 architectures, by hub name, importable without torch.

Loading a backbone offline (``pretrained: false``) and planning memory (``esmtune plan``) both
need a checkpoint's shape without its weights; this table is the one place it is written. Values
from the checkpoints' config.json on the hub (facebook/esm2_*): every ESM2 model has a feed-forward
width of four times its hidden size and the 33-token ESM-1b alphabet.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "ESM2_ARCHITECTURES",
    "ESM2_VOCAB",
    "ESM2_VOCAB_SIZE",
    "Esm2Architecture",
    "known_architecture",
]

# The ESM-1b/ESM2 alphabet, in token-id order: <cls>, <pad>, <eos>, <unk>, 20 amino acids + X B U
# Z O, '.', '-', <null_1>, <mask>. Every ESM2 checkpoint has it (its vocab.txt), so tokenising is
# a lookup in this list (esmtune.data.encoding) and needs no tokenizer library.
ESM2_VOCAB = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W",
    "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)  # fmt: skip
ESM2_VOCAB_SIZE = len(ESM2_VOCAB)


class Esm2Architecture(NamedTuple):
    """The shape of an ESM2 encoder: what memory and parameter counts depend on."""

    layers: int
    hidden: int
    heads: int

    @property
    def intermediate(self) -> int:
        """Width of the feed-forward layer (ESM2: four times the hidden size)."""
        return 4 * self.hidden


ESM2_ARCHITECTURES: dict[str, Esm2Architecture] = {
    "esm2_t6_8M_UR50D": Esm2Architecture(6, 320, 20),
    "esm2_t12_35M_UR50D": Esm2Architecture(12, 480, 20),
    "esm2_t30_150M_UR50D": Esm2Architecture(30, 640, 20),
    "esm2_t33_650M_UR50D": Esm2Architecture(33, 1280, 20),
    "esm2_t36_3B_UR50D": Esm2Architecture(36, 2560, 40),
    "esm2_t48_15B_UR50D": Esm2Architecture(48, 5120, 40),
}


def known_architecture(name: str) -> Esm2Architecture | None:
    """The architecture of a published ESM2 model named by hub id or its last part, else None."""
    return ESM2_ARCHITECTURES.get(name.rstrip("/").split("/")[-1])
