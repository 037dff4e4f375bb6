"""Every file esmtune writes gets the mode the umask implies, weights included.

safetensors writes through a private 0600 temporary file; without esmtune setting the mode,
another user (or the API container's unprivileged user) could read everything but the model.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from esmtune.embeddings import EmbeddingCache, write_embeddings
from esmtune.export import export_run
from esmtune.rundir import save_weights


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module", params=["hf", "onnx"])
def export_dir(request, lora_run: Path, tmp_path_factory) -> Path:
    if request.param == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("mode_exports") / request.param
    return export_run(lora_run, out, request.param, check_sequences=0)


def _wrong_modes(root: Path) -> list[str]:
    """Entries whose permission bits are not what a plain open()/mkdir() gives under the umask."""
    mask = _umask()
    wrong = []
    for path in [root, *root.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != expected:
            wrong.append(f"{path.relative_to(root)}: {mode:o}, expected {expected:o}")
    return wrong


def test_run_files_follow_the_umask(lora_run: Path) -> None:
    assert (lora_run / "model" / "weights.safetensors").is_file()
    assert not _wrong_modes(lora_run)


@pytest.mark.export
def test_export_files_follow_the_umask(export_dir: Path) -> None:
    assert not _wrong_modes(export_dir)


def test_a_stricter_umask_is_respected(tmp_path: Path) -> None:
    from esmtune.checkpoint.statefile import save_state

    previous = os.umask(0o027)
    try:
        save_weights({"w": torch.zeros(2)}, tmp_path / "weights.safetensors")
        save_state({"step": torch.ones(1), "lr": 0.1}, tmp_path / "state.safetensors")
    finally:
        os.umask(previous)
    for name in ("weights.safetensors", "state.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_embedding_files_follow_the_umask(tmp_path: Path) -> None:
    written = tmp_path / "written"  # (tmp_path itself is pytest's, 0700)
    write_embeddings(written / "out.safetensors", ["a", "b"], torch.zeros(2, 4), {})
    cache = EmbeddingCache(written / "cache", {"backbone": "test"})
    cache.fetch(["MKV"], lambda missing: {index: torch.zeros(4) for index in missing})
    assert len(list(written.rglob("*.safetensors"))) == 2
    assert not _wrong_modes(written)


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.export
def test_another_user_can_read_the_weights(lora_run: Path, export_dir: Path) -> None:
    """As nobody: each weight file, copied with its mode into a folder nobody may enter."""
    weights = [
        lora_run / "model" / "weights.safetensors",
        *sorted((lora_run / "checkpoints").glob("*/*.safetensors")),
        *sorted(export_dir.glob("*.safetensors")),
    ]
    # pytest's own temporary folders are 0700, so the files are copied (mode and all) into one
    # that everyone may enter; the question is the files' modes, not the folders'.
    with tempfile.TemporaryDirectory() as shared:
        os.chmod(shared, 0o755)
        for source in weights:
            copy = Path(shared) / f"{source.parent.name}-{source.name}"
            shutil.copy2(source, copy)
            result = subprocess.run(
                [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(copy)],
                capture_output=True,
                check=False,
            )
            assert result.returncode == 0, f"{source}: {result.stderr.decode()}"
            assert result.stdout == source.read_bytes()
