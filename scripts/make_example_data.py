#!/usr/bin/env python
"""Build the small bundled example datasets under ``examples/`` from the real public data.

Developer script, run by hand; it is not part of the ``esmtune`` package and must never be
imported by it. The package never reads the source data: only the files written here are
shipped. Every example is seeded and deterministic, so running the script again gives
byte-identical files.

Usage::

    python scripts/make_example_data.py                    # every example, from ../shared/data
    python scripts/make_example_data.py --only gb1 secreted
    python scripts/make_example_data.py --data DATA_DIR --examples OUT_DIR
    python scripts/make_example_data.py SCL2205_FASTA_DIR [--out examples/scl3]   # scl3 only

``DATA_DIR`` holds ``scl2205/`` (``fasta/{train,validation,test}/<Label>.fasta``,
``table/scl2205.csv``, ``LICENSE``), ``gb1/`` (``sampled.csv``, ``LICENSE``) and
``flip_ss3/`` (``sequences.fasta``, ``labels.fasta``, ``mask.fasta``, ``LICENSE``); by
default it is ``shared/data`` beside this repository. Each example folder also gets the source's
``LICENSE``; its ``README.md`` is written by hand from the counts printed here.

Sources:

* scl2205 subcellular localisation, from the ``p-scldata`` package (version 2025.6.0;
  UniProtKB, homology-reduced within and across splits by its authors; MIT licence,
  copyright 2025 Ouso).
* GB1 binding fitness from the FLIP benchmark (Dallago et al., 2021, ``splits/gb1``,
  ``sampled`` split; splits under the Academic Free License 3.0, raw data from Wu et al.
  2016, eLife, CC BY 4.0).
* Secondary structure in 3 states from the FLIP benchmark (``splits/secondary_structure``;
  data of NetSurfP-2.0, Klausen et al. 2019, and of the ProtTrans paper's NEW364 test set;
  Academic Free License 3.0).

Examples:

``scl3`` (multiclass, per-label FASTA folders), from the per-label FASTA layout:

1. Read every FASTA file of every split and label in the source (all labels, not only the
   three kept, so that conflicts are seen). A trailing ``*`` is removed from each sequence.
2. Duplicates: a sequence that occurs under two or more different labels (anywhere in the
   source) is dropped entirely. A sequence that occurs more than once under the same label
   keeps only its first occurrence, in split order train, validation, test (then file
   order), so no sequence is in two splits.
3. Keep only the labels Secreted, Nucleus and Mitochondrion, sequences of 50 to 300
   residues inclusive, made only of the 20 standard amino acids plus ``X``.
4. Sample with ``random.Random(0)`` (one generator, splits in the order train, validation,
   test and labels in the order above) at most 250 / 50 / 80 sequences per label for
   train / validation / test; fewer if not available. The sampled records are written in
   their source order, to ``scl3/{train,validation,test}/<Label>.fasta`` with the original
   record ids and sequences wrapped at 60 characters.

``secreted`` (binary, one FASTA file with ``key=value`` headers) and ``scl_locations``
(multilabel, per-split TSV files) start from ``table/scl2205.csv`` (columns
``id,sequence,label,locations,split``, read in file order):

1. Every record whose sequence occurs more than once in the table (under the same or
   different labels, in any split) is dropped, all its copies; so no sequence is repeated
   and none is in two splits.
2. Keep sequences of 50 to 400 residues inclusive, made only of ESM2 residue letters
   ``ACDEFGHIKLMNPQRSTVWYXBZUO``. The original split of each record is kept.

``secreted``: positives are the records labelled ``Secreted``, negatives those with any
other single location (records with two or more locations are not used). Per split,
``random.Random(0)`` (one generator; splits train, validation, test; positives, then
negatives) samples 233 / 40 / 67 positives and 467 / 80 / 133 negatives for train /
validation / test, i.e. one third positive; negatives are drawn uniformly from the pooled
single-location records, so they keep their natural mix. Written to
``secreted/secreted.fasta`` as ``>ID secreted=yes|no split=SPLIT``, splits in the order
train, validation, test and records in table order within a split, wrapped at 60.

``scl_locations``: per split, 40 % of the records (320 / 60 / 100 of 800 / 150 / 250) are
drawn from the scl2205 labels with two or more locations and 60 % from the single-location
labels. Within each of the two groups the count is spread evenly over the labels (smallest
label first; a label with fewer records than its share gives them all and the rest goes to
the larger labels), then ``random.Random(0)`` (one generator; splits train, validation,
test; labels in name order) samples each label's share. Locations that occur fewer than 20
times in the sampled train are removed from every split (a record left with no location
is dropped), so validation and test hold no location that train lacks. Written to
``scl_locations/{train,validation,test}.tsv`` (columns ``id``, ``sequence``,
``locations``; ``;``-separated, as in scl2205), records in table order.

``gb1`` (regression, one CSV with a split column), from ``gb1/sampled.csv`` (columns
``sequence,target,set,validation``): the pools are train (``set=train``, ``validation``
not ``True``), validation (``set=train``, ``validation=True``) and test (``set=test``).
``random.Random(0)`` (one generator; splits train, validation, test) samples 600 / 100 /
300 rows. Each row's id is ``gb1_`` plus the residues at positions 39, 40, 41 and 54
(1-based), the only positions that vary; these are unique. ``target`` is copied as written
in the source. Written to ``gb1/gb1.csv`` (columns ``id,sequence,target,split``), splits
in the order train, validation, test and rows in source order within a split.

``ss3`` (residue_classification, the FLIP / biotrainer per-residue layout), from
``flip_ss3/`` (``sequences.fasta``; ``labels.fasta`` with one of ``C``, ``H``, ``E`` per
residue and headers ``SET=train|test VALIDATION=True|False``; ``mask.fasta`` with ``1`` for
resolved and ``0`` for unresolved residues), read in file order with wrapped lines joined:

1. The pools are train (``SET=train VALIDATION=False``), validation (``SET=train
   VALIDATION=True``) and test (``SET=test``, the NEW364 set), as FLIP defines them. Ids
   must be the same in the three files, each label string and mask as long as its sequence,
   and no sequence may occur twice (the script stops otherwise).
2. Keep chains of at most 300 residues with at least one unmasked residue.
3. ``random.Random(0)`` (one generator; splits train, validation, test) samples 800 / 150 /
   150 chains per split, without looking at their labels, and writes them in source order.
   Written to ``ss3/sequences.fasta``, ``ss3/labels.fasta`` (the source's headers) and
   ``ss3/mask.fasta``, one line per record as in the source (biotrainer reads only the last
   line of a wrapped record).
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from Bio import SeqIO

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
EXAMPLES = ("scl3", "secreted", "scl_locations", "gb1", "ss3")

SPLITS = ("train", "validation", "test")
LABELS = ("Secreted", "Nucleus", "Mitochondrion")
MAX_PER_LABEL = {"train": 250, "validation": 50, "test": 80}
MIN_LEN, MAX_LEN = 50, 300
ALPHABET = frozenset("ACDEFGHIKLMNPQRSTVWY" + "X")
SEED = 0
WRAP = 60

# secreted and scl_locations (from the scl2205 table)
TABLE_MIN_LEN, TABLE_MAX_LEN = 50, 400
ESM_RESIDUES = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")
SECRETED = "Secreted"
SECRETED_SIZES = {"train": 700, "validation": 120, "test": 200}
SECRETED_POSITIVE_FRACTION = 1 / 3
LOCATION_SIZES = {"train": 800, "validation": 150, "test": 250}
MULTI_LOCATION_FRACTION = 0.4
MIN_LOCATION_COUNT = 20

# gb1 (FLIP sampled split)
GB1_SIZES = {"train": 600, "validation": 100, "test": 300}
GB1_VARIABLE_POSITIONS = (39, 40, 41, 54)  # 1-based

# ss3 (FLIP secondary structure, per residue)
SS3_SIZES = {"train": 800, "validation": 150, "test": 150}
SS3_MAX_LEN = 300
SS3_FILES = ("sequences.fasta", "labels.fasta", "mask.fasta")


# ---------------------------------------------------------------------------------------
# shared helpers


def write_fasta(path: Path, records: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for rid, seq in records:
            fh.write(f">{rid}\n")
            for i in range(0, len(seq), WRAP):
                fh.write(seq[i : i + WRAP] + "\n")


def copy_license(source: Path, out_dir: Path) -> None:
    """Copy ``source`` to ``out_dir/LICENSE`` unless an identical file is already there."""
    data = source.read_bytes()
    target = out_dir / "LICENSE"
    out_dir.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if target.read_bytes() == data:
            return
        target.unlink()  # the copied LICENSE may be read-only, like its source
    target.write_bytes(data)


def sample_in_order(rng: random.Random, pool: list, k: int) -> list:
    """``k`` items of ``pool`` chosen by ``rng``, in pool order."""
    return [pool[i] for i in sorted(rng.sample(range(len(pool)), k))]


def spread(total: int, sizes: dict[str, int]) -> dict[str, int]:
    """Share ``total`` as evenly as possible over groups of the given sizes.

    Smallest group first, each gets ``min(size, remaining // groups left)``, so a group too
    small for its share gives all it has and the rest goes to the larger ones.
    """
    shares = {}
    remaining = total
    order = sorted(sizes, key=lambda name: (sizes[name], name))
    for i, name in enumerate(order):
        share = min(sizes[name], remaining // (len(order) - i))
        shares[name] = share
        remaining -= share
    return shares


def length_summary(seqs: Iterable[str]) -> str:
    lengths = [len(s) for s in seqs]
    if not lengths:
        return "-"
    return f"{min(lengths)} / {statistics.median(lengths):g} / {max(lengths)}"


# ---------------------------------------------------------------------------------------
# scl3: per-label FASTA folders (multiclass)


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


def build_scl3(source: Path, out: Path) -> None:
    records = read_source(source)
    print(f"read {len(records)} records from {source}")

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
            write_fasta(out / split / f"{label}.fasta", [pool[i] for i in chosen])
            counts.append(f"{k}/{len(pool)}")
        total = sum(int(c.split("/")[0]) for c in counts)
        print(f"{split:<11}" + "".join(f"{c:>15}" for c in counts) + f"{total:>8}")
    print(f"(sampled/available) written to {out}")


# ---------------------------------------------------------------------------------------
# the scl2205 table: secreted (binary) and scl_locations (multilabel)

Row = dict[str, str]


def read_scl_table(path: Path) -> list[Row]:
    """Rows of ``scl2205.csv`` that pass the duplicate, length and residue filters."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    print(f"read {len(rows)} records from {path}")
    for row in rows:
        row["sequence"] = row["sequence"].upper()
    bad_split = {row["split"] for row in rows} - set(SPLITS)
    if bad_split:
        sys.exit(f"error: unexpected split(s) {sorted(bad_split)} in {path}")
    times = Counter(row["sequence"] for row in rows)
    repeated = {seq for seq, n in times.items() if n > 1}
    labels_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        labels_of[row["sequence"]].add(row["label"])
    n_conflicting = sum(1 for seq in repeated if len(labels_of[seq]) > 1)
    kept = [row for row in rows if row["sequence"] not in repeated]
    print(
        f"dropped {len(rows) - len(kept)} records of {len(repeated)} sequences occurring more "
        f"than once ({n_conflicting} of them under two or more labels)"
    )
    n_len = n_alpha = 0
    out = []
    for row in kept:
        seq = row["sequence"]
        if not TABLE_MIN_LEN <= len(seq) <= TABLE_MAX_LEN:
            n_len += 1
        elif not set(seq) <= ESM_RESIDUES:
            n_alpha += 1
        else:
            out.append(row)
    print(
        f"dropped {n_len} outside {TABLE_MIN_LEN}-{TABLE_MAX_LEN} residues, {n_alpha} with "
        f"letters that are not ESM2 residues; {len(out)} left"
    )
    return out


def build_secreted(rows: list[Row], out_dir: Path) -> None:
    rng = random.Random(SEED)
    chosen: list[tuple[Row, str]] = []
    print(f"{'split':<11}{'yes':>12}{'no':>12}{'total':>8}")
    for split in SPLITS:
        single = [r for r in rows if r["split"] == split and ";" not in r["locations"]]
        positives = [r for r in single if r["label"] == SECRETED]
        negatives = [r for r in single if r["label"] != SECRETED]
        n_pos = round(SECRETED_SIZES[split] * SECRETED_POSITIVE_FRACTION)
        n_neg = SECRETED_SIZES[split] - n_pos
        if n_pos > len(positives) or n_neg > len(negatives):
            sys.exit(f"error: secreted {split}: too few records for {n_pos} + {n_neg}")
        picked = {r["id"]: "yes" for r in sample_in_order(rng, positives, n_pos)}
        picked.update({r["id"]: "no" for r in sample_in_order(rng, negatives, n_neg)})
        chosen += [(r, picked[r["id"]]) for r in single if r["id"] in picked]
        print(
            f"{split:<11}{f'{n_pos}/{len(positives)}':>12}{f'{n_neg}/{len(negatives)}':>12}"
            f"{n_pos + n_neg:>8}"
        )
    path = out_dir / "secreted.fasta"
    out_dir.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for row, value in chosen:
            fh.write(f">{row['id']} secreted={value} split={row['split']}\n")
            seq = row["sequence"]
            for i in range(0, len(seq), WRAP):
                fh.write(seq[i : i + WRAP] + "\n")
    print(f"(sampled/available) written to {path}")
    print("negatives by source label:")
    for split in SPLITS:
        mix = Counter(r["label"] for r, v in chosen if r["split"] == split and v == "no")
        print(f"  {split:<11}" + ", ".join(f"{k} {n}" for k, n in sorted(mix.items())))
    print("lengths (min / median / max):")
    for split in SPLITS:
        for value in ("yes", "no"):
            seqs = [r["sequence"] for r, v in chosen if r["split"] == split and v == value]
            print(f"  {split:<11}{value:<4}{length_summary(seqs)}")


def build_scl_locations(rows: list[Row], out_dir: Path) -> None:
    rng = random.Random(SEED)
    sampled: dict[str, list[Row]] = {}
    for split in SPLITS:
        by_label: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            if row["split"] == split:
                by_label[row["label"]].append(row)
        n_multi = round(LOCATION_SIZES[split] * MULTI_LOCATION_FRACTION)
        groups = {
            True: {lab: len(rs) for lab, rs in by_label.items() if ";" in lab},
            False: {lab: len(rs) for lab, rs in by_label.items() if ";" not in lab},
        }
        shares = spread(n_multi, groups[True]) | spread(
            LOCATION_SIZES[split] - n_multi, groups[False]
        )
        picked: set[str] = set()
        for label in sorted(by_label):
            picked.update(r["id"] for r in sample_in_order(rng, by_label[label], shares[label]))
        sampled[split] = [r for r in rows if r["split"] == split and r["id"] in picked]
        described = ", ".join(
            f"{label} {shares[label]}/{len(records)}" for label, records in sorted(by_label.items())
        )
        print(f"{split}: {len(sampled[split])} sampled ({described})")

    train_counts = Counter(loc for r in sampled["train"] for loc in r["locations"].split(";"))
    keep = {loc for loc, n in train_counts.items() if n >= MIN_LOCATION_COUNT}
    removed = sorted(set(train_counts) - keep)
    print(f"locations under {MIN_LOCATION_COUNT} in train, removed: {removed or 'none'}")

    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lines = ["id\tsequence\tlocations\n"]
        n_multi = n_dropped = 0
        counts: Counter[str] = Counter()
        for row in sampled[split]:
            locations = [loc for loc in row["locations"].split(";") if loc in keep]
            if not locations:
                n_dropped += 1
                continue
            n_multi += len(locations) > 1
            counts.update(locations)
            fields = (row["id"], row["sequence"], ";".join(locations))
            if any("\t" in f or "\n" in f for f in fields):
                sys.exit(f"error: tab or newline in record {row['id']}")
            lines.append("\t".join(fields) + "\n")
        extra = set(counts) - keep
        if extra:
            sys.exit(f"error: {split} has locations absent from train: {sorted(extra)}")
        (out_dir / f"{split}.tsv").write_text("".join(lines))
        n = len(lines) - 1
        print(
            f"{split}: {n} records ({n_dropped} left without a location dropped), "
            f"{n_multi} with 2+ locations ({n_multi / n:.1%}), lengths "
            f"{length_summary(r['sequence'] for r in sampled[split])}"
        )
        print("  " + ", ".join(f"{loc} {k}" for loc, k in sorted(counts.items())))
    print(f"written to {out_dir}")


# ---------------------------------------------------------------------------------------
# gb1 (regression)


def build_gb1(source: Path, out_dir: Path) -> None:
    with source.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    print(f"read {len(rows)} rows from {source}")
    pools: dict[str, list[Row]] = {split: [] for split in SPLITS}
    for row in rows:
        if row["set"] == "test":
            pools["test"].append(row)
        elif row["set"] == "train":
            held_out = row["validation"].strip().lower() == "true"
            pools["validation" if held_out else "train"].append(row)
        else:
            sys.exit(f"error: unexpected set {row['set']!r} in {source}")

    def variant_id(seq: str) -> str:
        return "gb1_" + "".join(seq[p - 1] for p in GB1_VARIABLE_POSITIONS)

    ids = Counter(variant_id(r["sequence"]) for r in rows)
    if any(n > 1 for n in ids.values()):
        sys.exit("error: gb1 variant ids are not unique")

    rng = random.Random(SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gb1.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "sequence", "target", "split"])
        for split in SPLITS:
            chosen = sample_in_order(rng, pools[split], GB1_SIZES[split])
            for row in chosen:
                seq = row["sequence"]
                writer.writerow([variant_id(seq), seq, row["target"], split])
            targets = [float(r["target"]) for r in chosen]
            print(
                f"{split}: {len(chosen)}/{len(pools[split])} rows; target mean "
                f"{statistics.mean(targets):.3f}, std {statistics.stdev(targets):.3f}, "
                f"median {statistics.median(targets):.3f}, min {min(targets):.3f}, "
                f"max {max(targets):.3f}"
            )
    print(f"written to {path}")


# ---------------------------------------------------------------------------------------
# ss3 (per-residue classification, FLIP / biotrainer layout)


def read_fasta_records(path: Path) -> list[tuple[str, str, str]]:
    """(id, header after the id, text with wrapped lines joined) of every record, in order."""
    records = []
    for rec in SeqIO.parse(str(path), "fasta"):
        header = rec.description.split(maxsplit=1)
        records.append((rec.id, header[1] if len(header) > 1 else "", str(rec.seq)))
    return records


def ss3_split(header: str) -> str:
    fields = dict(word.partition("=")[::2] for word in header.split())
    if fields.get("SET") == "test" and fields.get("VALIDATION", "False") == "False":
        return "test"
    if fields.get("SET") == "train" and fields.get("VALIDATION") in ("True", "False"):
        return "validation" if fields["VALIDATION"] == "True" else "train"
    sys.exit(f"error: unexpected split header {header!r}")


def build_ss3(source: Path, out_dir: Path) -> None:
    sequences, labels, masks = (read_fasta_records(source / name) for name in SS3_FILES)
    print(f"read {len(sequences)} chains from {source}")
    label_of = {rid: (header, text) for rid, header, text in labels}
    mask_of = {rid: text for rid, _, text in masks}
    if not (len(label_of) == len(mask_of) == len(sequences) == len({r for r, _, _ in sequences})):
        sys.exit("error: ids are repeated, or differ between the three files")
    if len({seq for _, _, seq in sequences}) != len(sequences):
        sys.exit("error: a sequence occurs twice")
    pools: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    n_long = n_masked = 0
    for rid, _, seq in sequences:
        if rid not in label_of or rid not in mask_of:
            sys.exit(f"error: {rid} has no labels or no mask")
        header, label = label_of[rid]
        if not len(seq) == len(label) == len(mask_of[rid]):
            sys.exit(f"error: {rid}: sequence, labels and mask differ in length")
        if len(seq) > SS3_MAX_LEN:
            n_long += 1
        elif "1" not in mask_of[rid]:
            n_masked += 1
        else:
            pools[ss3_split(header)].append((rid, seq))
    print(
        f"dropped {n_long} chains longer than {SS3_MAX_LEN} residues, {n_masked} with every "
        f"residue masked"
    )
    rng = random.Random(SEED)
    chosen = {split: sample_in_order(rng, pools[split], SS3_SIZES[split]) for split in SPLITS}
    order = {rid: i for i, (rid, _, _) in enumerate(sequences)}
    picked = sorted((rec for recs in chosen.values() for rec in recs), key=lambda r: order[r[0]])
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {name: [] for name in SS3_FILES}
    for rid, seq in picked:
        header, label = label_of[rid]
        texts["sequences.fasta"].append(f">{rid}\n{seq}\n")
        texts["labels.fasta"].append(f">{rid} {header}\n{label}\n")
        texts["mask.fasta"].append(f">{rid}\n{mask_of[rid]}\n")
    for name, lines in texts.items():
        (out_dir / name).write_text("".join(lines))
    print(f"{'split':<11}{'chains':>12}{'residues':>10}{'masked':>8}{'C':>7}{'H':>7}{'E':>7}")
    for split in SPLITS:
        residues = [
            (label_of[rid][1][i], mask_of[rid][i])
            for rid, seq in chosen[split]
            for i in range(len(seq))
        ]
        used = Counter(label for label, flag in residues if flag == "1")
        n_used = sum(used.values())
        shares = "".join(f"{used[c] / n_used:>7.1%}" for c in "CHE")
        print(
            f"{split:<11}{f'{len(chosen[split])}/{len(pools[split])}':>12}{len(residues):>10}"
            f"{(len(residues) - n_used) / len(residues):>8.1%}{shares}"
        )
        print(f"{'':<11}lengths {length_summary(seq for _, seq in chosen[split])}")
    print(f"(sampled/available; shares of unmasked residues) written to {out_dir}")


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source",
        type=Path,
        nargs="?",
        help="build only scl3, from this scl2205 per-label FASTA directory holding "
        "train/, validation/, test/ (the original form of this script)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("examples/scl3"),
        help="with SOURCE: output directory (default: examples/scl3)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"directory holding scl2205/, gb1/ and flip_ss3/ (default: {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--examples",
        type=Path,
        default=REPO / "examples",
        help=f"directory the examples are written into (default: {REPO / 'examples'})",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=EXAMPLES,
        default=list(EXAMPLES),
        help="build only these examples (default: all)",
    )
    args = parser.parse_args(argv)

    if args.source is not None:
        build_scl3(args.source, args.out)
        return 0

    scl, gb1, ss3 = args.data / "scl2205", args.data / "gb1", args.data / "flip_ss3"
    needed = {
        "scl3": [scl / "fasta", scl / "LICENSE"],
        "secreted": [scl / "table" / "scl2205.csv", scl / "LICENSE"],
        "scl_locations": [scl / "table" / "scl2205.csv", scl / "LICENSE"],
        "gb1": [gb1 / "sampled.csv", gb1 / "LICENSE"],
        "ss3": [*(ss3 / name for name in SS3_FILES), ss3 / "LICENSE"],
    }
    missing = sorted({str(p) for name in args.only for p in needed[name] if not p.exists()})
    if missing:
        sys.exit("error: source data not found (give --data): " + ", ".join(missing))

    table: list[Row] | None = None
    for name in EXAMPLES:
        if name not in args.only:
            continue
        out_dir = args.examples / name
        print(f"== {name}")
        if name == "scl3":
            build_scl3(scl / "fasta", out_dir)
        elif name == "gb1":
            build_gb1(gb1 / "sampled.csv", out_dir)
        elif name == "ss3":
            build_ss3(ss3, out_dir)
        else:
            if table is None:
                table = read_scl_table(scl / "table" / "scl2205.csv")
            builder = build_secreted if name == "secreted" else build_scl_locations
            builder(table, out_dir)
        source = {"gb1": gb1, "ss3": ss3}.get(name, scl)
        copy_license(source / "LICENSE", out_dir)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
