"""Homology-aware splits: similar sequences never straddle train and the splits that judge it.

A random split puts close homologues on both sides, and the test score then measures memory
more than generalisation. ``esmtune data split`` clusters every sequence with MMseqs2
(``easy-cluster``: members within ``identity`` of their cluster's representative, over
``coverage`` of both) and places whole clusters in train, validation or test, largest first,
each where it brings the split's size and label counts closest to their targets.

Clusters are not closed under similarity: greedy set cover leaves pairs above the threshold in
different clusters, and the cascade compares only representatives in its later steps. So every
placement is checked the way the data check measures leakage, with one ``easy-search`` of
validation and test against train; the clusters of every pair it finds are merged and placed
again (:data:`MAX_ROUNDS` times at most), and what is still found after that moves into train.
The result passes ``data.max_identity`` at the same identity and coverage.

With ``keep_test`` the test split stays as it is: sequences within ``identity`` of a test
sequence are left out (listed in ``dropped.tsv``), and train and validation are split around it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esmtune.config import DataConfig, Task
from esmtune.data.check import sequence_problem
from esmtune.data.fasta import SequenceRecord
from esmtune.data.homology import Alignment, MMseqs, closest_alignments
from esmtune.data.layout import SPLITS, UNSPLIT
from esmtune.data.memory import is_in_memory
from esmtune.data.report import DataReport, align_table
from esmtune.data.rewrite import Placement, write_layout
from esmtune.data.sources import SplitRecords, read_splits
from esmtune.data.split_options import SplitOptions
from esmtune.data.targets import TargetKind
from esmtune.errors import DataError, EsmtuneError
from esmtune.storage import check_writable, storage_errors
from esmtune.tasks import task_class

__all__ = [
    "CLUSTERS_FILE",
    "DROPPED_FILE",
    "MAX_ROUNDS",
    "SUMMARY_FILE",
    "SUMMARY_TEXT_FILE",
    "SplitResult",
    "split_dataset",
]

CLUSTERS_FILE = "clusters.tsv"
DROPPED_FILE = "dropped.tsv"
SUMMARY_FILE = "summary.json"
SUMMARY_TEXT_FILE = "summary.txt"
# Placements made afresh with clusters merged along the pairs a check found; after the last,
# what a check still finds is moved into train (which can only remove pairs, never add them).
MAX_ROUNDS = 4
_MAX_LISTED = 10
_MAX_LABELS_SHOWN = 20


@dataclass
class SplitResult:
    """What ``data split`` wrote: the folder, the dataset path in it, and its summary."""

    out: Path
    data_path: Path
    summary: dict[str, object]
    text: str


@dataclass
class _Groups:
    """Clusters joined into groups (union-find over pool positions); a group is placed whole."""

    parent: list[int]

    @classmethod
    def of(cls, representative: list[int]) -> _Groups:
        groups = cls(list(range(len(representative))))
        for member, head in enumerate(representative):
            groups.join(member, head)
        return groups

    def root(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def join(self, first: int, second: int) -> None:
        """Merge the groups of two members."""
        a, b = self.root(first), self.root(second)
        self.parent[max(a, b)] = min(a, b)  # the root is the group's first member

    def members(self, alive: list[bool]) -> list[list[int]]:
        """Every group's members (those still alive), by first member."""
        found: dict[int, list[int]] = {}
        for item in range(len(self.parent)):
            if alive[item]:
                found.setdefault(self.root(item), []).append(item)
        return list(found.values())


@dataclass
class _Dropped:
    """A record left out for being within the identity of a kept test sequence."""

    record: SequenceRecord
    split: str
    test: SequenceRecord
    identity: float
    coverage: float


@dataclass
class _State:
    """The pool being split: its records, their labels, groups and current placement."""

    records: list[SequenceRecord]
    labels: list[tuple[str, ...]]
    groups: _Groups
    alive: list[bool]
    placed: list[str] = field(default_factory=list)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def split_dataset(
    data: DataConfig,
    task: Task | str,
    options: SplitOptions,
    out: Path,
    say: Callable[[str], None] = _say,
) -> SplitResult:
    """Split a dataset by homology and write it to ``out`` in the layout it was read in.

    Args:
        data: Where the dataset is and how it is read (as training reads it); its records may
            name no split yet (a folder of ``<Label>.fasta`` files, a table without a split
            column, FASTA headers without ``split=``).
        task: The task, which reads the targets; class labels are balanced across splits.
        options: Identity, coverage, shares, seed, whether the test split is kept.
        out: A new (or empty) folder for the split dataset, ``clusters.tsv``, the summary and,
            with ``keep_test``, ``dropped.tsv``.
        say: Where progress lines go [standard error].

    Returns:
        The folder, the dataset path to train on, and the summary.

    Raises:
        EsmtuneError: When ``out`` exists and is not empty.
        DataError: Listing every problem of the data (as the data check words them).
        MissingMMseqsError: When MMseqs2 is not installed.
        StorageError: When ``out`` cannot be written.
    """
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EsmtuneError(
            f"{out} already exists and is not empty; data split never overwrites: choose another "
            "--out, or delete this one first"
        )
    if is_in_memory(data.path):
        raise DataError("data split reads datasets from files; give a path")
    kind = task_class(task)
    found = _read(data, kind)
    mmseqs = MMseqs(threads=options.threads)
    check_writable(out.parent, "Choose another --out")
    fixed = found.splits.get("test", []) if options.keep_test else []
    if options.keep_test and not fixed:
        raise DataError(
            f"{data.path}: --keep-test keeps the test split, but there is none; drop "
            "--keep-test to split every sequence"
        )
    pool = [
        record
        for split in (*SPLITS, UNSPLIT)
        if not (options.keep_test and split == "test")
        for record in found.splits.get(split, [])
    ]
    origin = {id(r): split for split, records in found.splits.items() for r in records}
    say(f"read {len(pool) + len(fixed):,} sequences: {found.layout}")
    dropped: list[_Dropped] = []
    if fixed:
        say(f"searching for sequences within {options.identity:.0%} identity of the "
            f"{len(fixed):,} test sequences kept ...")  # fmt: skip
        pool, dropped = _leave_out_near(fixed, pool, origin, options, mmseqs)
        say(f"  {len(dropped):,} left out (listed in {DROPPED_FILE})")
    if not pool:
        raise DataError(f"{data.path}: no sequences left to split")
    say(
        f"clustering {len(pool):,} sequences with MMseqs2 (identity ≥ {options.identity:g}, "
        f"coverage ≥ {options.coverage:g} of both, {mmseqs.threads} thread(s)) ..."
    )
    clock = time.perf_counter()
    representative = mmseqs.cluster([r.sequence for r in pool], options.identity, options.coverage)
    sizes = Counter(representative)
    say(f"  {len(sizes):,} clusters (largest {max(sizes.values())}) in "
        f"{time.perf_counter() - clock:.0f} s")  # fmt: skip
    state = _State(
        pool,
        [() if kind.per_residue else record.labels for record in pool],
        _Groups.of(representative),
        [True] * len(pool),
    )
    # Copies stay together even where MMseqs2 cannot look (sequences too short to search).
    first_with: dict[str, int] = {}
    for index, record in enumerate(pool):
        state.groups.join(index, first_with.setdefault(record.sequence, index))
    shares = _shares(options)
    rounds, moved = _place_and_check(state, fixed, shares, options, mmseqs, dropped, origin, say)
    placed = {id(r): state.placed[i] for i, r in enumerate(pool) if state.alive[i]}
    placed |= {id(r): "test" for r in fixed}
    summary = _summary(
        data, found, kind, options, mmseqs, state, fixed, representative, placed,
        (rounds, moved, len(dropped)),
    )  # fmt: skip
    summary["seconds"] = round(time.perf_counter() - started, 1)
    with storage_errors(out, lambda _: "Free space or choose another --out"):
        return _write(data, found, state, fixed, placed, representative, dropped, out, summary)


# --- reading ---------------------------------------------------------------------------------


def _read(data: DataConfig, kind: TargetKind) -> SplitRecords:
    """Every record, split or not, checked as the data check checks them; one error lists all.

    Ids must be unique across the whole dataset: clusters.tsv has one row per id.
    """
    columns = data.target_columns or kind.default_target_columns()
    found = read_splits(data, kind, columns, unsplit=UNSPLIT)
    errors = [*found.errors, *_listed(found.record_errors)]
    records = [r for split in (*SPLITS, UNSPLIT) for r in found.splits.get(split, [])]
    errors += _listed([problem for r in records if (problem := sequence_problem(r))])
    first: dict[str, SequenceRecord] = {}
    repeated = []
    for record in records:
        if record.id in first:
            repeated.append(
                f"{record.where}: the id is repeated (first at {first[record.id].position}); "
                "data split needs one id per sequence: rename or remove the repeat"
            )
        first.setdefault(record.id, record)
    errors += _listed(repeated)
    if not records and not errors:
        errors.append(f"{data.path}: no sequences found")
    DataReport(data.path, kind, {}, [], errors).raise_if_errors()
    return found


def _listed(items: list[str]) -> list[str]:
    if len(items) <= _MAX_LISTED:
        return items
    return [*items[:_MAX_LISTED], f"... and {len(items) - _MAX_LISTED} more of the same kind"]


def _leave_out_near(
    fixed: list[SequenceRecord],
    pool: list[SequenceRecord],
    origin: dict[int, str],
    options: SplitOptions,
    mmseqs: MMseqs,
) -> tuple[list[SequenceRecord], list[_Dropped]]:
    """The pool less what is within the identity of a kept test sequence, and what that is.

    One search of the test sequences against the pool, as the data check searches; copies of
    test sequences too short to search are found by their residues.
    """
    hits = mmseqs.search([r.sequence for r in fixed], [r.sequence for r in pool],
                         options.coverage, options.identity)  # fmt: skip
    near = closest_alignments(hits, per="target")
    kept_at = {record.sequence: position for position, record in enumerate(fixed)}
    for i, record in enumerate(pool):
        if i not in near and record.sequence in kept_at:
            near[i] = Alignment(kept_at[record.sequence], i, 1.0, 1.0, 1.0, 0.0, 0.0)
    dropped = [
        _Dropped(r, origin[id(r)], fixed[near[i].query], near[i].identity, near[i].coverage)
        for i, r in enumerate(pool)
        if i in near
    ]
    return [r for i, r in enumerate(pool) if i not in near], dropped


# --- placing -----------------------------------------------------------------------------------


def _shares(options: SplitOptions) -> dict[str, float]:
    """The share of the pool each split is placed towards (with keep_test: train, validation)."""
    shares = dict(zip(SPLITS, options.fractions, strict=True))
    if options.keep_test:
        del shares["test"]
    total = sum(shares.values())
    return {split: share / total for split, share in shares.items() if share > 0}


def _place(
    state: _State, shares: dict[str, float], seed: int, redo: set[int] | None = None
) -> None:
    """Place every group, largest first, in the split furthest behind its target for it.

    Behind for a group: the share of its labels' targets the split would still miss with half
    the group in it (averaged over the group's labels; Sainte-Laguë's rule for indivisible
    seats), then the same for its size target. Measured relative to the targets, so that every
    split fills at the same pace and gets its share of large clusters as well as small ones:
    validation and test then hold proteins like the rest, not only those without relatives
    (which filling the biggest gap first would leave them); with half the group counted, a group
    does not overshoot a small split that misses less than it brings. Rare labels are spread like
    common ones. Largest first, so that the small groups at the end even out what the large ones
    left.
    Groups of one size are taken in an order the seed shuffles; ties go to train, then
    validation. ``redo``: place only the groups with these roots again (merged after a check),
    the others staying where they are, so that a check's repair does not unsettle the rest.
    """
    groups = state.groups.members(state.alive)
    alive = [i for i, living in enumerate(state.alive) if living]
    label_totals = Counter(label for i in alive for label in state.labels[i])
    target = {split: share * len(alive) for split, share in shares.items()}
    size = dict.fromkeys(shares, 0)
    counts: dict[str, Counter[str]] = {split: Counter() for split in shares}
    order = {split: index for index, split in enumerate(shares)}
    if redo is None:
        state.placed = [""] * len(state.records)
    else:
        for group in groups:
            if state.groups.root(group[0]) not in redo:  # stays: counts towards its split
                split = state.placed[group[0]]
                size[split] += len(group)
                counts[split].update(label for i in group for label in state.labels[i])
        groups = [group for group in groups if state.groups.root(group[0]) in redo]
    random.Random(seed).shuffle(groups)
    groups.sort(key=len, reverse=True)  # stable: the shuffle orders equal sizes

    def behind(split: str, labels: Counter[str], members: int) -> tuple[float, float, int]:
        missing = 0.0
        for label, count in labels.items():
            aim = shares[split] * label_totals[label]
            missing += count * (aim - counts[split][label] - count / 2) / aim
        of_labels = missing / sum(labels.values()) if labels else 0.0
        of_size = (target[split] - size[split] - members / 2) / target[split]
        return of_labels, of_size, -order[split]

    for group in groups:
        labels = Counter(label for i in group for label in state.labels[i])
        split = max(shares, key=lambda s: behind(s, labels, len(group)))
        size[split] += len(group)
        counts[split].update(labels)
        for i in group:
            state.placed[i] = split


def _place_and_check(
    state: _State,
    fixed: list[SequenceRecord],
    shares: dict[str, float],
    options: SplitOptions,
    mmseqs: MMseqs,
    dropped: list[_Dropped],
    origin: dict[int, str],
    say: Callable[[str], None],
) -> tuple[int, int]:
    """Place, check with easy-search, merge and place again until the check finds nothing.

    The check is the data check's search: validation and test (with the kept test set) against
    train. A pair found joins the two groups, which are placed again (the others stay); after
    MAX_ROUNDS, the held-out side's group moves into train instead. A kept test sequence's pair
    leaves the training sequence out.

    Returns:
        The rounds made, and the sequences moved into train.
    """
    rounds = moved = 0
    redo: set[int] | None = None  # the first placement places every group
    while True:
        rounds += 1
        if rounds <= MAX_ROUNDS:
            _place(state, shares, options.seed, redo)
        alive = [i for i, living in enumerate(state.alive) if living]
        train = [i for i in alive if state.placed[i] == "train"]
        held = [i for i in alive if state.placed[i] != "train"]
        queries = [state.records[i].sequence for i in held] + [r.sequence for r in fixed]
        say(f"round {rounds}: checking {len(queries):,} validation/test sequences against "
            f"{len(train):,} in train ...")  # fmt: skip
        hits = mmseqs.search(queries, [state.records[i].sequence for i in train],
                             options.coverage, options.identity)  # fmt: skip
        if not hits:
            say("  none within the identity of a training sequence")
            return rounds, moved
        close = {held[h.query] for h in hits if h.query < len(held)}
        for hit in hits:
            if hit.query >= len(held):  # a kept test sequence: the training one must go
                index = train[hit.target]
                if state.alive[index]:
                    state.alive[index] = False
                    record = state.records[index]
                    test = fixed[hit.query - len(held)]
                    dropped.append(
                        _Dropped(record, origin[id(record)], test, hit.identity, hit.coverage)
                    )
            elif rounds < MAX_ROUNDS:
                state.groups.join(held[hit.query], train[hit.target])
        if rounds < MAX_ROUNDS:
            redo = {state.groups.root(i) for i in close}
            say(f"  {len(close):,} within it; their clusters are merged and placed again")
            continue
        roots = {state.groups.root(i) for i in close}
        movers = [i for i in alive if state.placed[i] != "train" and state.groups.root(i) in roots]
        for i in movers:
            state.placed[i] = "train"
        moved += len(movers)
        say(f"  {len(close):,} within it; their groups ({len(movers):,} sequences) move to train")


# --- the summary -------------------------------------------------------------------------------


def _summary(
    data: DataConfig,
    found: SplitRecords,
    kind: TargetKind,
    options: SplitOptions,
    mmseqs: MMseqs,
    state: _State,
    fixed: list[SequenceRecord],
    representative: list[int],
    placed: dict[int, str],
    counts: tuple[int, int, int],
) -> dict[str, Any]:
    """Sizes, shares against targets, clusters and label balance per split, as JSON data."""
    rounds, moved, dropped = counts
    records = [r for i, r in enumerate(state.records) if state.alive[i]] + fixed
    total = len(records)
    targets = dict(zip(SPLITS, options.fractions, strict=True))
    if options.keep_test:
        rest = total - len(fixed)
        targets = {s: share * rest / total for s, share in _shares(options).items()}
        targets["test"] = len(fixed) / total
    clusters: dict[str, set[int]] = {s: set() for s in SPLITS}
    groups: dict[str, set[int]] = {s: set() for s in SPLITS}
    for i in range(len(state.records)):
        if state.alive[i]:
            clusters[state.placed[i]].add(representative[i])
            groups[state.placed[i]].add(state.groups.root(i))
    split_of = [placed[id(r)] for r in records]
    # Per-residue targets have no per-sequence labels: only sizes are balanced.
    labelled = [() if kind.per_residue else r.labels for r in records]
    label_names = sorted({label for labels in labelled for label in labels})
    overall = {label: sum(label in labels for labels in labelled) / total for label in label_names}
    splits: dict[str, dict[str, Any]] = {}
    label_shares = {label: {"all": overall[label]} for label in label_names}
    for split in SPLITS:
        members = [i for i, s in enumerate(split_of) if s == split]
        row: dict[str, Any] = {
            "sequences": len(members),
            "share": len(members) / total if total else 0.0,
            "target": targets.get(split, 0.0),
            "clusters": len(clusters[split]) if split != "test" or not fixed else None,
            "groups": len(groups[split]) if split != "test" or not fixed else None,
        }
        if label_names and members:
            off = {}
            for label in label_names:
                share = sum(label in labelled[i] for i in members) / len(members)
                label_shares[label][split] = share
                off[label] = share - overall[label]
            worst = max(off, key=lambda label: (abs(off[label]), label))
            row["label_shares_off_by"] = {
                "max": abs(off[worst]),
                "label": worst,
                "mean": sum(abs(x) for x in off.values()) / len(off),
            }
        splits[split] = row
    return {
        "input": str(data.path),
        "layout": found.layout,
        "task": kind.task.value,
        "options": options.model_dump(mode="json"),
        "mmseqs": mmseqs.version(),
        "sequences": total,
        "clusters": len(set(representative[i] for i, a in enumerate(state.alive) if a)),
        "largest_cluster": max(Counter(representative).values()),
        "groups": len({state.groups.root(i) for i, a in enumerate(state.alive) if a}),
        "rounds": rounds,
        "moved_to_train": moved,
        "dropped": dropped,
        "splits": splits,
        "label_shares": label_shares,
    }


def _summary_text(summary: dict[str, Any]) -> str:
    """The summary for a person: what was split, how, and how close each split came."""
    options = summary["options"]
    splits = summary["splits"]
    lines = [
        f"data split of {summary['input']} ({summary['task']}; {summary['layout']})",
        f"MMseqs2 {summary['mmseqs']}: identity ≥ {options['identity']:g} over ≥ "
        f"{options['coverage']:g} of both sequences; seed {options['seed']}",
        f"{summary['sequences']:,} sequences; {summary['clusters']:,} clusters (largest "
        f"{summary['largest_cluster']}), placed as {summary['groups']:,} groups after "
        f"{summary['rounds']} check(s) with easy-search",
    ]
    header = ["split", "sequences", "share", "target", "clusters", "label shares off by"]
    rows = []
    for split, row in splits.items():
        off = row.get("label_shares_off_by")
        rows.append([
            split,
            f"{row['sequences']:,}",
            f"{row['share']:.1%}",
            f"{row['target']:.1%}",
            "kept" if row["clusters"] is None else f"{row['clusters']:,}",
            "-" if off is None else f"max {off['max'] * 100:.1f} pp ({off['label']}), "
            f"mean {off['mean'] * 100:.1f} pp",
        ])  # fmt: skip
    lines.append(align_table(header, rows, []).rsplit("\n", 1)[0])
    lines += _label_share_table(summary["label_shares"], list(splits))
    if summary["moved_to_train"]:
        lines.append(
            f"{summary['moved_to_train']:,} validation/test sequence(s) moved into train: still "
            f"within the identity of a training sequence after {summary['rounds'] - 1} placements"
        )
    if summary["dropped"]:
        lines.append(
            f"{summary['dropped']:,} sequence(s) left out for being within the identity of a "
            f"kept test sequence: {DROPPED_FILE}"
        )
    empty = [split for split, row in splits.items() if not row["sequences"] and row["target"]]
    if empty:
        lines.append(
            f"warning: {', '.join(empty)} received no sequences: too few clusters for these "
            "fractions; lower --identity, or give more data"
        )
    lines.append(
        "no validation or test sequence is within that identity of a training sequence (the "
        "data check's easy-search found none)"
    )
    lines.append(f"train on it with data.path={summary['data_path']} ({summary['seconds']} s)")
    return "\n".join(lines)


def _label_share_table(shares: dict[str, dict[str, float]], splits: list[str]) -> list[str]:
    """Each label's share of the whole dataset and of each split (the furthest off, if many)."""
    if not shares:
        return []

    def furthest(label: str) -> float:
        overall = shares[label]["all"]
        return max(abs(shares[label].get(split, overall) - overall) for split in splits)

    shown = sorted(shares, key=lambda label: (-furthest(label), label))[:_MAX_LABELS_SHOWN]
    heading = "label shares" + (
        f" (the {len(shown)} furthest off of {len(shares)})" if len(shown) < len(shares) else ""
    )
    present = [split for split in splits if any(split in shares[label] for label in shares)]
    rows = [
        [label, f"{shares[label]['all']:.1%}",
         *(f"{shares[label][s]:.1%}" if s in shares[label] else "-" for s in present)]
        for label in sorted(shown)
    ]  # fmt: skip
    return [heading, align_table(["label", "all", *present], rows, []).rsplit("\n", 1)[0]]


# --- writing -----------------------------------------------------------------------------------


def _write(
    data: DataConfig,
    found: SplitRecords,
    state: _State,
    fixed: list[SequenceRecord],
    placed: dict[int, str],
    representative: list[int],
    dropped: list[_Dropped],
    out: Path,
    summary: dict[str, Any],
) -> SplitResult:
    """Write into a staging folder beside ``out``, then rename it: never half a dataset."""
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        records = [r for i, r in enumerate(state.records) if state.alive[i]] + fixed
        placement = Placement(
            splits={(r.source, r.line): placed[id(r)] for r in records},
            dropped={(d.record.source, d.record.line) for d in dropped},
            by_id={r.id: placed[id(r)] for r in records},
            dropped_ids={d.record.id for d in dropped},
        )
        written = write_layout(found.form, Path(data.path), data.split_column, placement, staging)
        data_path = out / written.relative_to(staging)
        _write_clusters(staging / CLUSTERS_FILE, state, fixed, representative)
        if dropped:
            _write_dropped(staging / DROPPED_FILE, dropped)
        summary["data_path"] = str(data_path)
        text = _summary_text(summary)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        (staging / SUMMARY_TEXT_FILE).write_text(text + "\n")
        if out.exists():
            out.rmdir()  # empty, checked before
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SplitResult(out, data_path, summary, text)


def _write_clusters(
    path: Path, state: _State, fixed: list[SequenceRecord], representative: list[int]
) -> None:
    """id, cluster (its MMseqs2 representative), group (the unit placed), split; one per id."""
    records = state.records
    lines = ["id\tcluster\tgroup\tsplit"]
    for i, record in enumerate(records):
        if state.alive[i]:
            cluster = records[representative[i]].id
            group = records[state.groups.root(i)].id
            lines.append(f"{record.id}\t{cluster}\t{group}\t{state.placed[i]}")
    lines += [f"{record.id}\t\t\ttest" for record in fixed]
    path.write_text("\n".join(lines) + "\n")


def _write_dropped(path: Path, dropped: list[_Dropped]) -> None:
    """id, its split in the input, the kept test sequence it is close to, identity, coverage."""
    lines = ["id\tinput_split\tnearest_test_id\tidentity\tcoverage"]
    lines += [
        f"{d.record.id}\t{d.split}\t{d.test.id}\t{d.identity:.3f}\t{d.coverage:.3f}"
        for d in dropped
    ]
    path.write_text("\n".join(lines) + "\n")
