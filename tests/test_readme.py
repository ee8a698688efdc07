"""Every ```python block of the README runs by itself, as a reader who copies it runs it.

Each block is a script run in a fresh interpreter, in a temporary directory,
with nothing in its environment but ``REDIS_URL`` (the test server) and the
Anthropic SDK's ``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL`` (a local
stand-in for the Messages API, since the tests have no network). A block whose
first line is ``# <file name>`` (``# jobs.py``, ``# ratelimit.toml``) is a file
the README asks the reader to create: it is written into every block's
directory, and a Python one also runs alone like the others.

The blocks run a few at a time, each on its own empty database of the server
(the URL's database and the next ones), so none sees another's keys.
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from fake_anthropic import FakeAnthropic

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", flags=re.S | re.M)
FILE_NAME = re.compile(r"# ([\w.-]+\.\w+)\n")
#: Blocks running at once (the suite shares two cores), each on its own database.
PARALLEL = 4
BLOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    """A fenced block of the README: its language, text, and where it is."""

    number: int
    language: str
    text: str
    line: int

    @property
    def file_name(self) -> str | None:
        """The file the README asks the reader to create with this block, if it names one."""
        named = FILE_NAME.match(self.text)
        return named[1] if named else None


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(number, match[1], match[2], text.count("\n", 0, match.start()) + 1)
        for number, match in enumerate(FENCE.finditer(text), 1)
    ]


BLOCKS = readme_blocks()
PYTHON = [block for block in BLOCKS if block.language == "python"]
FILES = {block.file_name: block.text for block in BLOCKS if block.file_name}


def test_readme_has_a_quickstart_first() -> None:
    assert PYTHON
    assert "Limiter(" in PYTHON[0].text
    assert "permit.settle(" in PYTHON[0].text


def database_url(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture
def databases(redis_url: str) -> Iterator[queue.Queue[str]]:
    """URLs of ``PARALLEL`` databases of the test server, each handed to one block at a time."""
    base = int(urlsplit(redis_url).path.strip("/") or 0)
    free: queue.Queue[str] = queue.Queue()
    for db in range(base, base + PARALLEL):
        free.put(database_url(redis_url, db))
    yield free
    for _ in range(PARALLEL):
        client = redis.Redis.from_url(free.get_nowait())
        client.flushdb()
        client.close()


def run_block(block: Block, databases: queue.Queue[str], api: str, workdir: Path) -> str:
    """Run ``block`` as a script in ``workdir`` on a free, emptied database; its output."""
    for name, text in FILES.items():
        (workdir / name).write_text(text, encoding="utf-8")
    script = workdir / f"readme_block_{block.number}.py"
    script.write_text(block.text, encoding="utf-8")
    url = databases.get()
    try:
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
        env = {"REDIS_URL": url, "ANTHROPIC_API_KEY": "test", "ANTHROPIC_BASE_URL": api}
        result = subprocess.run(
            [sys.executable, script.name],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
    finally:
        databases.put(url)
    where = f"README.md python block {block.number} (line {block.line})"
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_every_python_block_runs_alone(databases: queue.Queue[str], tmp_path: Path) -> None:
    with (
        FakeAnthropic(rpm=1000, itpm=1_000_000, otpm=200_000) as api,
        ThreadPoolExecutor(PARALLEL) as pool,
    ):
        runs = {}
        for block in PYTHON:
            workdir = tmp_path / f"block-{block.number}"
            workdir.mkdir()
            runs[block] = pool.submit(run_block, block, databases, api.base_url, workdir)
        outputs = {block: run.result() for block, run in runs.items()}
    # The retry_after example shows a real wait, not a rounding of a few milliseconds.
    [retry] = [out for block, out in outputs.items() if "exc.retry_after" in block.text]
    waited = re.search(r"try again in ([\d.]+)s", retry)
    assert waited is not None, retry
    assert float(waited[1]) >= 1.0


def test_files_the_readme_asks_for_are_named_once() -> None:
    names = [block.file_name for block in BLOCKS if block.file_name]
    assert len(names) == len(set(names))
