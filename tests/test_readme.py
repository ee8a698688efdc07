"""Every ```python block of the README runs, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_a_quickstart_first() -> None:
    assert BLOCKS
    assert "Limiter(" in BLOCKS[0]
    assert "permit.settle(" in BLOCKS[0]


def test_readme_snippets_run(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    namespace: dict[str, object] = {"__name__": "readme"}
    for number, block in enumerate(BLOCKS, 1):
        code = compile(block, f"README.md python block {number}", "exec")
        exec(code, namespace)
