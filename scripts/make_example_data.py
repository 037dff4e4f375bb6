#!/usr/bin/env python
"""Build the small bundled example dataset ``examples/scl3`` from scl2205.

Developer script, run once by hand; it is not part of the ``esmtune`` package
and must never be imported by it.

Source: the scl2205 subcellular-localisation data from the ``p-scldata``
package (version 2025.6.0; UniProtKB, homology-reduced by its authors; MIT
licence, copyright 2025 Ouso), in the per-label layout
``<source>/{train,validation,test}/<Label>.fasta``.

Selection, in this order:

1. Read every FASTA file of every split and label in the source (all labels,
   not only the three kept, so that conflicts are seen). A trailing ``*`` is
   removed from each sequence.
2. Duplicates: a sequence that occurs under two or more different labels
   (anywhere in the source) is dropped entirely. A sequence that occurs more
   than once under the same label keeps only its first occurrence, in split
   order train, validation, test (then file order), so no sequence is in two
   splits.
3. Keep only the labels Secreted, Nucleus and Mitochondrion, sequences of
   50 to 300 residues inclusive, made only of the 20 standard amino acids
   plus ``X``.
4. Sample with ``random.Random(0)`` (one generator, splits in the order
   train, validation, test and labels in the order above) at most 250 / 50 /
   80 sequences per label for train / validation / test; fewer if not
   available. The sampled records are written in their source order.

Output: ``<out>/{train,validation,test}/<Label>.fasta`` with the original
record ids and sequences wrapped at 60 characters.

Usage::

    python scripts/make_example_data.py /work/shared/data/scl2205/fasta
    python scripts/make_example_data.py SOURCE_DIR --out examples/scl3
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

from Bio import SeqIO

SPLITS = ("train", "validation", "test")
LABELS = ("Secreted", "Nucleus", "Mitochondrion")
MAX_PER_LABEL = {"train": 250, "validation": 50, "test": 80}
MIN_LEN, MAX_LEN = 50, 300
ALPHABET = frozenset("ACDEFGHIKLMNPQRSTVWY" + "X")
SEED = 0
WRAP = 60


def read_source(source: Path) -> list[tuple[str, str, str, str]]:
    """Return (split, label, id, sequence) for every record, in source order."""
    records = []
    for split in SPLITS:
        split_dir = source / split
        files = sorted(split_dir.glob("*.fasta"))
        if not files:
            sys.exit(f"error: no .fasta files in {split_dir}")
        for path in files:
            label = path.stem
            for rec in SeqIO.parse(str(path), "fasta"):
                seq = str(rec.seq).upper()
                if seq.endswith("*"):
                    seq = seq[:-1]
                records.append((split, label, rec.id, seq))
    return records


def write_fasta(path: Path, records: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for rid, seq in records:
            fh.write(f">{rid}\n")
            for i in range(0, len(seq), WRAP):
                fh.write(seq[i : i + WRAP] + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source",
        type=Path,
        help="scl2205 per-label FASTA directory holding train/, validation/, test/",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("examples/scl3"),
        help="output directory (default: examples/scl3)",
    )
    args = parser.parse_args(argv)

    records = read_source(args.source)
    print(f"read {len(records)} records from {args.source}")

    # Duplicates, over the whole source.
    labels_of: dict[str, set[str]] = defaultdict(set)
    for _, label, _, seq in records:
        labels_of[seq].add(label)
    conflicting = {s for s, labs in labels_of.items() if len(labs) > 1}
    n_conflict_records = sum(1 for r in records if r[3] in conflicting)
    seen: set[str] = set()
    deduped = []
    n_same_label_dups = 0
    for rec in records:
        seq = rec[3]
        if seq in conflicting:
            continue
        if seq in seen:
            n_same_label_dups += 1
            continue
        seen.add(seq)
        deduped.append(rec)
    print(
        f"dropped {n_conflict_records} records of {len(conflicting)} sequences "
        f"found under more than one label; dropped {n_same_label_dups} repeated "
        f"records of a sequence under the same label"
    )

    # Label, length and alphabet filters.
    pools: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    n_len = n_alpha = 0
    for split, label, rid, seq in deduped:
        if label not in LABELS:
            continue
        if not MIN_LEN <= len(seq) <= MAX_LEN:
            n_len += 1
            continue
        if not set(seq) <= ALPHABET:
            n_alpha += 1
            continue
        pools[split, label].append((rid, seq))
    print(
        f"among {', '.join(LABELS)}: dropped {n_len} outside {MIN_LEN}-{MAX_LEN} "
        f"residues, {n_alpha} with residues other than the 20 standard + X"
    )

    # Sampling and writing.
    rng = random.Random(SEED)
    print(f"{'split':<11}" + "".join(f"{lab:>15}" for lab in LABELS) + f"{'total':>8}")
    for split in SPLITS:
        counts = []
        for label in LABELS:
            pool = pools[split, label]
            k = min(MAX_PER_LABEL[split], len(pool))
            chosen = sorted(rng.sample(range(len(pool)), k))
            write_fasta(args.out / split / f"{label}.fasta", [pool[i] for i in chosen])
            counts.append(f"{k}/{len(pool)}")
        total = sum(int(c.split("/")[0]) for c in counts)
        print(f"{split:<11}" + "".join(f"{c:>15}" for c in counts) + f"{total:>8}")
    print(f"(sampled/available) written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
