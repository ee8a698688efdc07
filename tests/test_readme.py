"""Every ```python block of the README runs, in order, in one namespace."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
from fake_anthropic import FakeAnthropic

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_a_quickstart_first() -> None:
    assert BLOCKS
    assert "Limiter(" in BLOCKS[0]
    assert "permit.settle(" in BLOCKS[0]


def test_readme_snippets_run(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    # The snippets' anthropic clients reach a local stand-in for the Messages API.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
    # An importable module, so an RQ worker can find the jobs it defines.
    module = types.ModuleType("readme")
    monkeypatch.setitem(sys.modules, "readme", module)
    with FakeAnthropic(rpm=1000, itpm=1_000_000, otpm=200_000) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.base_url)
        for number, block in enumerate(BLOCKS, 1):
            code = compile(block, f"README.md python block {number}", "exec")
            exec(code, module.__dict__)
