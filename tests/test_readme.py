"""Every ```python block of README.md runs as pasted: a complete program.

Each block is compiled under its README line number and executed in a fresh
namespace (imports, names and all must be written in the block; modules already
imported are only reused), with the working directory a new temporary folder and
the hub offline. Blocks are kept to a few seconds each.

Two conventions of the README, both visible in its Markdown source:

- A block that calls ``torch.distributed.init_process_group`` is a script meant
  for ``torchrun``; it runs here as a world of one process, with the environment
  torchrun gives it (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``...).
  tests/test_distributed.py runs the same calls on two processes.
- ``<!-- skip-test: REASON -->`` on the line before a block skips it (for a
  block that cannot run offline); REASON is shown in the test report.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!--\s*skip-test:\s*(.*?)\s*-->\s*$")
TORCHRUN = "init_process_group("


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """The ```python blocks of a Markdown text: (line of the block's first code line,
    code, the skip reason given on the line before the fence or None)."""
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start(1)) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        blocks.append((line, match.group(1), skip.group(1) if skip else None))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_blocks_are_found():
    """The extraction sees the README's blocks (a changed fence style would run nothing)."""
    assert len(BLOCKS) >= 4
    assert README.read_text(encoding="utf-8").count("```python") == len(BLOCKS)


def test_block_extraction_and_skip_marker():
    text = "intro\n\n```python\nx = 1\n```\n\n<!-- skip-test: needs network -->\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(4, "x = 1\n", None), (9, "y = 2\n", "needs network")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("line,code,skip", BLOCKS, ids=[f"README.md:{line}" for line, _, _ in BLOCKS])
def test_readme_python_block_runs(line, code, skip, tmp_path, monkeypatch, capsys):
    if skip:
        pytest.skip(skip)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torchrun = TORCHRUN in code
    if torchrun:  # what `torchrun --nproc_per_node 1` sets
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
            monkeypatch.setenv(key, value)
    program = compile("\n" * (line - 1) + code, str(README), "exec")  # tracebacks give README lines
    try:
        exec(program, {"__name__": "__main__"})
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
