"""Full disks, read-only folders, damaged checkpoints, dead ends: one clear message each.

Root cannot make a folder read-only with chmod, so two kinds of test: fault injection at the
lowest write function (always runs), and the real thing in a private mount namespace (a small
tmpfs that fills up, a read-only bind mount), skipped where ``unshare``/``mount`` are not allowed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from tests.helpers import FULL_RUN_CHECKPOINTS, FULL_RUN_SETTINGS, tiny_overrides

from esmtune.cli import main

FIRST, LAST = FULL_RUN_CHECKPOINTS


def _overrides(model: Path, data: Path, out: Path, name: str) -> list[str]:
    """A fresh run like conftest's ``full_run``: two epochs of full fine-tuning, a checkpoint
    after each, both kept."""
    return [*tiny_overrides(model, data, out, name), *FULL_RUN_SETTINGS]


def _snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every entry's bytes (files) and modification time, to prove nothing was touched."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
        for p in [folder, *folder.rglob("*")]
    }


def _resumes_from(run: Path) -> Path | None:
    from esmtune.checkpoint import find_resume_point

    return find_resume_point(run).checkpoint


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _final_weights_equal(expected_run: Path, run: Path) -> None:
    expected = load_file(expected_run / "checkpoints" / LAST / "trainable.safetensors")
    got = load_file(run / "checkpoints" / LAST / "trainable.safetensors")
    assert expected.keys() == got.keys()
    assert all((expected[k] == got[k]).all() for k in expected), "weights differ after resume"


def _metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("last_session_seconds")
    return metrics


def test_resuming_a_finished_run_changes_nothing(
    full_run: Path, tmp_path_factory: pytest.TempPathFactory, capsys
) -> None:
    # A copy, so that the shared run stays whole if this ever fails (in a folder whose name,
    # unlike this test's tmp_path, does not say "resuming").
    run = _copy(full_run, tmp_path_factory.mktemp("finished") / "run")
    before = _snapshot(run)
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run} is complete: all 2 of 2 epochs ran" in out
    assert "best validation macro_f1" in out and "nothing was changed" in out
    assert "resuming" not in out
    assert _snapshot(run) == before


@pytest.mark.parametrize("damaged", ["optimizer.safetensors", "trainable.safetensors"])
def test_truncated_newest_checkpoint_falls_back_to_the_previous(
    damaged: str, full_run: Path, tmp_path: Path, capsys
) -> None:
    run = _copy(full_run, tmp_path / "run")
    path = run / "checkpoints" / LAST / damaged
    os.truncate(path, path.stat().st_size // 2)
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {LAST} cannot be used: {damaged} is" in out and "truncated" in out
    assert f"falling back to the previous complete checkpoint, {FIRST}" in out
    # Epoch 2 ran again from epoch 1's checkpoint: the same weights and metrics as before.
    _final_weights_equal(full_run, run)
    assert _metrics(run) == _metrics(full_run)
    assert _resumes_from(run) == run / "checkpoints" / LAST  # whole again


def test_no_intact_checkpoint_is_a_clear_error(full_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(full_run, tmp_path / "run")
    for checkpoint in (run / "checkpoints").iterdir():
        os.truncate(checkpoint / "trainable.safetensors", 100)
    before = _snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    error = capsys.readouterr().err
    assert "has no checkpoint that can be resumed from" in error and "Traceback" not in error
    for name in (FIRST, LAST):
        assert f"{name}: trainable.safetensors is 100 bytes" in error
    assert f"move {run / 'checkpoints'} away" in error
    assert _snapshot(run) == before


def _stopped_before_first_checkpoint(full_run: Path, to: Path) -> Path:
    """A run killed while its first checkpoint was being written (1 epoch, to be quick)."""
    run = _copy(full_run, to)
    for leftover in ("checkpoints", "tensorboard", "model/weights.safetensors", "metrics.json"):
        path = run / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    staging = run / "checkpoints" / f".{FIRST}.tmp"
    staging.mkdir(parents=True)
    (staging / "trainable.safetensors").write_bytes(b"half a file")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["training"]["epochs"] = 1
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run


def test_run_stopped_before_its_first_checkpoint_can_start_afresh(
    full_run: Path, tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, capsys
) -> None:
    run = _stopped_before_first_checkpoint(full_run, tmp_path / "stopped")

    # A fresh run of the same name refuses, and says what is there and what works.
    overrides = _overrides(tiny_model_dir, learnable_data, tmp_path, "stopped")
    assert main(["train", *overrides]) == 2
    error = capsys.readouterr().err
    assert f"it holds only an unfinished checkpoint, .{FIRST}.tmp" in error
    assert f"`esmtune train --resume {run}` starts that run afresh in place" in error
    assert "empty" not in error

    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run} holds only an unfinished checkpoint (.{FIRST}.tmp, removed now)" in out
    assert "starts afresh in place" in out
    assert [p.name for p in (run / "checkpoints").iterdir()] == [FIRST]
    assert [h["epoch"] for h in json.loads((run / "metrics.json").read_text())["history"]] == [1]


def test_fresh_run_into_an_interrupted_one_points_to_resume(
    full_run: Path, tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, capsys
) -> None:
    run = _copy(full_run, tmp_path / "interrupted")
    (run / "metrics.json").unlink()
    overrides = _overrides(tiny_model_dir, learnable_data, tmp_path, "interrupted")
    assert main(["train", *overrides]) == 2
    error = capsys.readouterr().err
    assert f"holds an interrupted run (newest checkpoint {LAST})" in error
    assert f"Continue it with `esmtune train --resume {run}`" in error


def _disk_full_in(folder_prefix: str, file_part: str, monkeypatch) -> None:
    """safetensors fails as on a full disk for one file of one checkpoint."""
    import esmtune.storage as storage

    real = storage.save_file

    def save_file(tensors, filename, metadata=None):
        path = Path(filename)
        if path.parent.name.startswith(folder_prefix) and file_part in path.name:
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(storage, "save_file", save_file)


def test_disk_full_while_writing_a_checkpoint(
    full_run: Path,
    tiny_model_dir: Path,
    learnable_data: Path,
    tmp_path: Path,
    monkeypatch,
    capsys,
) -> None:
    _disk_full_in(f".{LAST}", "optimizer", monkeypatch)
    assert main(["train", *_overrides(tiny_model_dir, learnable_data, tmp_path, "full")]) == 2
    error = capsys.readouterr().err
    run = tmp_path / "full"
    staging = run / "checkpoints" / f".{LAST}.tmp"
    assert f"error: cannot write {staging / 'optimizer.safetensors'}:" in error
    assert "no space left on the device" in error and "Traceback" not in error
    assert f"The unfinished checkpoint {LAST} was removed" in error
    assert f"resumed from checkpoint {FIRST} with `esmtune train --resume {run}`" in error
    # No half checkpoint, and the previous one intact.
    assert [p.name for p in (run / "checkpoints").iterdir()] == [FIRST]
    assert _resumes_from(run) == run / "checkpoints" / FIRST

    monkeypatch.undo()  # space freed
    assert main(["train", "--resume", str(run)]) == 0
    _final_weights_equal(full_run, run)
    assert _metrics(run) == _metrics(full_run)


def _read_only(root: Path, monkeypatch) -> None:
    """Folders and files under ``root`` cannot be created, as on a read-only file system."""
    real_mkdir, real_open = os.mkdir, os.open

    def refuse(path) -> None:
        if Path(path).resolve().is_relative_to(root.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


def _expensive(*args, **kwargs):
    raise AssertionError("the model was loaded before the output folder was checked")


@pytest.mark.parametrize("command", ["evaluate", "export", "train", "resume"])
def test_read_only_output_is_found_before_the_work(
    command: str,
    full_run: Path,
    tiny_model_dir: Path,
    learnable_data: Path,
    tmp_path: Path,
    monkeypatch,
    capsys,
) -> None:
    import esmtune.evaluate
    import esmtune.export.write
    import esmtune.train

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    if command == "evaluate":
        run = _copy(full_run, read_only / "run")
        argv, named = ["evaluate", str(run)], run / "eval" / "test"
        monkeypatch.setattr(esmtune.evaluate, "load_run", _expensive)
    elif command == "export":
        argv = ["export", str(full_run), "--format", "hf", "--out", str(read_only / "hf")]
        named = read_only
        monkeypatch.setattr(esmtune.export.write, "load_run", _expensive)
    elif command == "train":
        argv = ["train", *_overrides(tiny_model_dir, learnable_data, read_only, "new")]
        named = read_only / "new"
        monkeypatch.setattr(esmtune.train, "build_model", _expensive)
    else:
        run = _copy(full_run, read_only / "run")
        (run / "metrics.json").unlink()
        shutil.rmtree(run / "checkpoints" / LAST)
        argv, named = ["train", "--resume", str(run)], run
        monkeypatch.setattr(esmtune.train, "build_model", _expensive)
    _read_only(read_only, monkeypatch)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"error: cannot write {named}:" in error
    assert "the file system is read-only" in error and "Traceback" not in error
    fix = {
        "evaluate": "copy the run where it can be written",
        "export": "Choose another --out folder",
        "train": "Choose another output.dir",
        "resume": "copy the run where it can be written and resume the copy",
    }[command]
    assert fix in error


def test_predictions_into_a_read_only_folder_are_one_message(
    full_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Writes no command wraps itself (predict -o) still end in a message, not a traceback."""
    import io

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    _read_only(read_only, monkeypatch)
    real_open = io.open

    def open_(path, mode="r", *args, **kwargs):  # Path.open goes through io.open, not os.open
        if any(flag in mode for flag in "wax+") and Path(path).parent == read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", open_)
    out = read_only / "predictions.tsv"
    assert main(["predict", str(full_run), "--sequence", "MKRKRRK", "-o", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"error: cannot write {out}: the file system is read-only" in error
    assert "Traceback" not in error


# --- the real thing: a private mount namespace -----------------------------------------------


def _namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-euc", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.fixture(scope="module")
def mounts(tmp_path_factory) -> None:
    """Skip unless this process may mount a tmpfs in a private namespace (root, no seccomp)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = tmp_path_factory.mktemp("mount_probe")
    result = _namespace(f"mount -t tmpfs -o size=64k tmpfs {probe}", probe)
    if result.returncode != 0:
        pytest.skip(f"cannot mount in a private namespace here: {result.stderr.strip()}")


def _step(name: str, *args: str | Path) -> str:
    """A shell line running esmtune; its status, stdout and stderr go to logs/<name>.*."""
    command = " ".join([sys.executable, "-m", "esmtune", *(f"'{a}'" for a in args)])
    output = f">logs/{name}.out 2>logs/{name}.err"
    return f"if {command} {output}; then echo 0; else echo $?; fi >logs/{name}.rc"


def _result(logs: Path, name: str) -> tuple[int, str, str]:
    """Status, stdout and stderr of a :func:`_step`."""
    code = int((logs / f"{name}.rc").read_text())
    return code, (logs / f"{name}.out").read_text(), (logs / f"{name}.err").read_text()


@pytest.mark.end_to_end
def test_real_read_only_file_system(
    mounts: None,
    full_run: Path,
    tiny_model_dir: Path,
    learnable_data: Path,
    tmp_path: Path,
) -> None:
    read_only = tmp_path / "read_only"
    done = _copy(full_run, read_only / "done")
    stopped = _copy(full_run, read_only / "stopped")
    (stopped / "metrics.json").unlink()
    shutil.rmtree(stopped / "checkpoints" / LAST)
    (tmp_path / "logs").mkdir()
    fresh = _overrides(tiny_model_dir, learnable_data, read_only, "new")
    script = "\n".join(
        [
            f"mount --bind '{read_only}' '{read_only}'",
            f"mount -o remount,bind,ro '{read_only}'",
            _step("evaluate", "evaluate", done),
            _step("export", "export", done, "--format", "hf", "--out", read_only / "hf"),
            _step("train", "train", *fresh),
            _step("resume", "train", "--resume", stopped),
            _step("finished", "train", "--resume", done),  # writes nothing: works read-only
        ]
    )
    result = _namespace(script, tmp_path)
    assert result.returncode == 0, result.stderr
    logs = tmp_path / "logs"
    expected = {
        "evaluate": done / "eval" / "test",
        "export": read_only,
        "train": read_only / "new",
        "resume": stopped,
    }
    for name, named in expected.items():
        code, _, error = _result(logs, name)
        assert code == 2, (name, error)
        assert f"error: cannot write {named}:" in error, (name, error)
        assert "the file system is read-only" in error and "Traceback" not in error, error
    code, out, _ = _result(logs, "finished")
    assert code == 0 and "is complete" in out


@pytest.mark.end_to_end
def test_real_disk_full_during_training(
    mounts: None,
    full_run: Path,
    tiny_model_dir: Path,
    learnable_data: Path,
    tmp_path: Path,
) -> None:
    """A 720 KiB tmpfs takes the first epoch's files (about 590 KiB) but not the second's."""
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir()
    logs.mkdir()
    run = disk / "full"
    script = "\n".join(
        [
            f"mount -t tmpfs -o size=720k tmpfs '{disk}'",
            _step("full", "train", *_overrides(tiny_model_dir, learnable_data, disk, "full")),
            f"ls -A '{run / 'checkpoints'}' >logs/after_failure",
            f"mount -o remount,size=16m '{disk}'",  # space freed
            _step("resume", "train", "--resume", run),
            f"cp -r '{run}' '{tmp_path / 'copy'}'",
        ]
    )
    result = _namespace(script, tmp_path)
    assert result.returncode == 0, result.stderr
    code, _, error = _result(logs, "full")
    assert code == 2, error
    assert "no space left on the device" in error and "Traceback" not in error, error
    assert f"resumed from checkpoint {FIRST} with `esmtune train --resume {run}`" in error
    assert (logs / "after_failure").read_text().split() == [FIRST]  # no half checkpoint
    code, _, error = _result(logs, "resume")
    assert code == 0, error
    copy = tmp_path / "copy"
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == [FIRST, LAST]
    assert [h["epoch"] for h in _metrics(copy)["history"]] == [1, 2]
