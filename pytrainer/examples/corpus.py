"""Text for the default run: the Python standard library's own source files,
which every Python installation carries, read in a fixed order; or a user's file."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import torch
from torch.utils.data import Dataset

__all__ = ["stdlib_corpus", "read_corpus", "ByteBlocks", "split"]


def stdlib_corpus(max_bytes: int) -> bytes:
    """Up to ``max_bytes`` of the standard library's .py files (tests and
    site-packages left out), sorted by path, so every run reads the same text."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts)
        if parts & {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}:
            continue
        files.append(path)
    chunks, total = [], 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    if not chunks:
        raise RuntimeError(f"no Python source files found under {root}")
    return b"".join(chunks)[:max_bytes]


def read_corpus(train_file: str | None, max_bytes: int) -> bytes:
    if train_file is None:
        return stdlib_corpus(max_bytes)
    path = os.path.expanduser(train_file)
    try:
        data = Path(path).read_bytes()[:max_bytes]
    except OSError as error:
        raise ValueError(f"--train_file {train_file}: cannot read it ({error.strerror})") from None
    if len(data) < 1024:
        raise ValueError(f"--train_file {train_file}: {len(data)} bytes is too little text "
                         "to train on (at least 1 KiB)")
    return data


def split(data: bytes, eval_fraction: float) -> tuple[bytes, bytes]:
    """Training text first, the held-out text the last ``eval_fraction`` of it."""
    cut = int(len(data) * (1.0 - eval_fraction))
    return data[:cut], data[cut:]


class ByteBlocks(Dataset):
    """Non-overlapping blocks of ``block_size`` bytes, each with its next bytes as labels."""

    def __init__(self, data: bytes, block_size: int):
        self.data = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.block_size = block_size
        self.count = max(0, (len(self.data) - 1) // block_size)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.count:
            raise IndexError(i)
        chunk = self.data[i * self.block_size:(i + 1) * self.block_size + 1].long()
        return {"input_ids": chunk[:-1], "labels": chunk[1:]}
