"""The fake Messages API, driven by the real ``anthropic`` SDK.

Whatever depends on time runs on a :class:`ManualClock`, so bucket levels, retry-after
values and header numbers are exact rather than "about right".
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import anthropic
import pytest
from anthropic.types import MessageParam, TextBlockParam, ToolParam
from fake_anthropic import (
    FakeAnthropic,
    ManualClock,
    count_input_tokens,
    default_output_tokens,
    prompt_parts,
)

#: Not a real model name, so the SDK never warns it is deprecated.
MODEL = "claude-fake-1"
HELLO: list[MessageParam] = [{"role": "user", "content": "Say hello, briefly."}]
HELLO_REQUEST: dict[str, Any] = {"messages": HELLO}

#: A system prompt long enough (over 1024 fake tokens) to be cacheable.
LONG_SYSTEM: list[TextBlockParam] = [
    {"type": "text", "text": "You are terse. " * 400, "cache_control": {"type": "ephemeral"}}
]


def sdk(server: FakeAnthropic, max_retries: int = 0) -> anthropic.Anthropic:
    """The real client, pointed at the fake, with the SDK's own retries off by default.

    The fake speaks plain HTTP, so certificates are not loaded: that alone would cost a
    tenth of a second per client.
    """
    return anthropic.Anthropic(
        base_url=server.base_url,
        api_key="test",
        max_retries=max_retries,
        http_client=anthropic.DefaultHttpxClient(verify=False),
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def unlimited() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


# --------------------------------------------------------------------------- happy paths


def test_create_returns_a_parsed_message_with_usage(unlimited: FakeAnthropic) -> None:
    with sdk(unlimited) as client:
        message = client.messages.create(model=MODEL, max_tokens=1024, messages=HELLO)
    output = default_output_tokens(HELLO_REQUEST)
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert message.id.startswith("msg_")
    assert message._request_id is not None
    assert message._request_id.startswith("req_")
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert len(message.content[0].text) == 4 * output
    assert message.usage.input_tokens == count_input_tokens(HELLO_REQUEST)
    assert message.usage.output_tokens == output
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0


def test_output_is_cut_at_max_tokens(unlimited: FakeAnthropic) -> None:
    with sdk(unlimited) as client:
        message = client.messages.create(model=MODEL, max_tokens=3, messages=HELLO)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_output_tokens_can_be_fixed_or_computed() -> None:
    with (
        FakeAnthropic(output_tokens=lambda request: len(request["messages"]) * 10) as server,
        sdk(server) as client,
    ):
        message = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert message.usage.output_tokens == 10


def test_input_count_covers_system_and_tools_and_ignores_cache_markers() -> None:
    tool: ToolParam = {"name": "lookup", "input_schema": {"type": "object"}}
    plain = {"system": "Be brief.", "tools": [tool], "messages": HELLO}
    marked = {
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "tools": [tool],
        "messages": HELLO,
    }
    assert count_input_tokens(plain) == count_input_tokens(marked)
    assert count_input_tokens(plain) > count_input_tokens(HELLO_REQUEST)
    assert count_input_tokens(plain) == sum(p.tokens for p in prompt_parts(plain))
    # The model and the generation settings are not part of the prompt.
    assert count_input_tokens({**plain, "model": "x", "max_tokens": 9}) == count_input_tokens(plain)


def test_raw_response_shows_the_rate_limit_headers(clock: ManualClock) -> None:
    with FakeAnthropic(rpm=50, itpm=30_000, otpm=8_000, clock=clock) as server, sdk(server) as c:
        before = time.time()
        raw = c.messages.with_raw_response.create(model=MODEL, max_tokens=1024, messages=HELLO)
        after = time.time()
        message = raw.parse()
    h = raw.headers
    used_in, used_out = message.usage.input_tokens, message.usage.output_tokens
    assert h["request-id"] == message._request_id
    assert h["anthropic-ratelimit-requests-limit"] == "50"
    assert h["anthropic-ratelimit-requests-remaining"] == "49"
    assert h["anthropic-ratelimit-input-tokens-limit"] == "30000"
    assert h["anthropic-ratelimit-input-tokens-remaining"] == str(30_000 - used_in)
    assert h["anthropic-ratelimit-output-tokens-limit"] == "8000"
    # A non-streamed answer is settled before it is sent: its output is already charged.
    assert h["anthropic-ratelimit-output-tokens-remaining"] == str(8_000 - used_out)
    assert h["anthropic-ratelimit-tokens-limit"] == "38000"
    assert h["anthropic-ratelimit-tokens-remaining"] == str(38_000 - used_in - used_out)
    # Reset: RFC 3339, rounded up to the second, when the bucket is full again (1 request
    # at 50/min: 1.2 s after the answer).
    reset = datetime.strptime(h["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ")
    assert before + 1.2 <= reset.replace(tzinfo=UTC).timestamp() <= after + 2.2


def test_stream_yields_text_and_a_final_message_with_usage(unlimited: FakeAnthropic) -> None:
    with sdk(unlimited) as client:
        whole = client.messages.create(model=MODEL, max_tokens=1024, messages=HELLO)
        with client.messages.stream(model=MODEL, max_tokens=1024, messages=HELLO) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert whole.content[0].type == "text"
    assert text == whole.content[0].text
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.stop_reason == "end_turn"
    assert unlimited.stats().accepted == 2
    assert [entry.stream for entry in unlimited.accepted()] == [False, True]


def test_stream_sends_the_real_event_sequence(unlimited: FakeAnthropic) -> None:
    with sdk(unlimited) as client:
        events = list(
            client.messages.create(model=MODEL, max_tokens=9, messages=HELLO, stream=True)
        )
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start, delta = events[0], events[-2]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == count_input_tokens(HELLO_REQUEST)
    assert delta.type == "message_delta"
    assert delta.usage.output_tokens == 9
    assert delta.delta.stop_reason == "max_tokens"


def test_count_tokens_matches_and_costs_nothing(clock: ManualClock) -> None:
    with FakeAnthropic(rpm=5, itpm=1_000, clock=clock) as server, sdk(server) as client:
        before = server.levels()
        counted = client.messages.count_tokens(model=MODEL, system="Be brief.", messages=HELLO)
        assert counted.input_tokens == count_input_tokens({"system": "Be brief.", **HELLO_REQUEST})
        assert server.levels() == before
        assert server.stats().count_tokens == 1
        assert server.stats().requests == 0


# --------------------------------------------------------------------------- rate limits


def test_rpm_exhausted_gives_rate_limit_error_with_retry_after(clock: ManualClock) -> None:
    with FakeAnthropic(rpm=2, clock=clock) as server, sdk(server) as client:
        for _ in range(2):
            client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
        error = caught.value
        assert error.status_code == 429
        assert error.type == "rate_limit_error"
        assert error.body == {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": error.api_message},
            "request_id": error.request_id,
        }
        assert "2 requests per minute" in str(error.api_message)
        headers = error.response.headers
        assert headers["request-id"] == error.request_id
        # One request refills in 60 s / 2 = 30 s.
        assert headers["retry-after"] == "30"
        assert headers["anthropic-ratelimit-requests-limit"] == "2"
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"

        clock.advance(29.9)
        with pytest.raises(anthropic.RateLimitError) as again:
            client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
        assert again.value.response.headers["retry-after"] == "1"  # 0.1 s, rounded up
        clock.advance(0.1)
        client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    stats = server.stats()
    assert (stats.requests, stats.accepted, stats.rate_limited) == (5, 3, 2)


def test_itpm_refuses_without_charging(clock: ManualClock) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "x" * 2_400}]
    need = count_input_tokens({"messages": messages})
    assert 500 < need < 1_000
    with FakeAnthropic(itpm=1_000, clock=clock) as server, sdk(server) as client:
        client.messages.create(model=MODEL, max_tokens=16, messages=messages)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=16, messages=messages)
        headers = caught.value.response.headers
        assert "1000 input tokens per minute" in str(caught.value.api_message)
        assert headers["anthropic-ratelimit-input-tokens-remaining"] == str(1_000 - need)
        missing = need - (1_000 - need)
        assert headers["retry-after"] == str(math.ceil(missing / (1_000 / 60)))
        assert server.levels()["input_tokens"] == 1_000 - need


def test_a_prompt_larger_than_the_bucket_never_passes(clock: ManualClock) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "x" * 8_000}]
    with FakeAnthropic(itpm=1_000, clock=clock) as server, sdk(server) as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=16, messages=messages)
        # The bucket is full already: the retry-after is the time to full, 0 s, so 1.
        assert caught.value.response.headers["retry-after"] == "1"
        assert server.stats().accepted == 0


def test_otpm_charges_actual_output_afterwards_and_can_go_into_debt(clock: ManualClock) -> None:
    with (
        FakeAnthropic(otpm=100, output_tokens=150, clock=clock) as server,
        sdk(server) as client,
    ):
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=200, messages=HELLO)
        assert raw.parse().usage.output_tokens == 150
        assert raw.headers["anthropic-ratelimit-output-tokens-remaining"] == "0"
        assert server.levels()["output_tokens"] == -50
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=200, messages=HELLO)
        # OTPM needs one token to admit: 51 tokens at 100/min take 30.6 s.
        assert caught.value.response.headers["retry-after"] == "31"
        assert "100 output tokens per minute" in str(caught.value.api_message)
    assert server.stats().output_tokens == 150


def test_reserve_max_tokens_admits_on_max_tokens_and_refunds(clock: ManualClock) -> None:
    with (
        FakeAnthropic(otpm=1_000, output_tokens=10, reserve_max_tokens=True, clock=clock) as server,
        sdk(server) as client,
    ):
        client.messages.create(model=MODEL, max_tokens=600, messages=HELLO)
        assert server.levels()["output_tokens"] == 990  # 600 taken, 590 given back
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=995, messages=HELLO)
        assert caught.value.response.headers["retry-after"] == "1"  # 5 tokens: 0.3 s
        # More than the bucket holds waits for a full bucket, then runs into debt.
        clock.advance(1)
        client.messages.create(model=MODEL, max_tokens=5_000, messages=HELLO)
        assert server.levels()["output_tokens"] == 990


def test_a_shorter_minute_scales_the_refill_not_the_headers(clock: ManualClock) -> None:
    with (
        FakeAnthropic(rpm=60, rpm_capacity=2, minute_s=1.0, clock=clock) as server,
        sdk(server) as client,
    ):
        for _ in range(2):
            raw = client.messages.with_raw_response.create(
                model=MODEL, max_tokens=8, messages=HELLO
            )
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "60"
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        clock.advance(1 / 60)
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert server.stats().accepted == 3


def test_admission_is_atomic_under_concurrency(clock: ManualClock) -> None:
    # The clock stands still, so exactly the capacity gets through, whatever the interleaving.
    with FakeAnthropic(rpm=20, clock=clock) as server, sdk(server) as client:

        def call(_: int) -> bool:
            try:
                client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
            except anthropic.RateLimitError:
                return False
            return True

        with ThreadPoolExecutor(max_workers=10) as pool:
            results = list(pool.map(call, range(50)))
    assert results.count(True) == 20
    stats = server.stats()
    assert (stats.requests, stats.accepted, stats.rate_limited) == (50, 20, 30)


def test_the_sdk_retry_obeys_retry_after() -> None:
    # Real clock, one request a second: the second call comes well within that second,
    # is told to wait 1 s, and the SDK's retry after that wait gets through.
    with (
        FakeAnthropic(rpm=1, minute_s=1.0) as server,
        sdk(server, max_retries=1) as client,
    ):
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        start = time.monotonic()
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert time.monotonic() - start >= 0.9
    stats = server.stats()
    assert (stats.accepted, stats.rate_limited) == (2, 1)


# --------------------------------------------------------------------------- spend limits


def test_enforced_spend_limit_is_a_429_without_retry_after(clock: ManualClock) -> None:
    with (
        FakeAnthropic(rpm=10, spend_limit_reached=True, clock=clock) as server,
        sdk(server) as client,
    ):
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        error = caught.value
        assert isinstance(error, anthropic.EnforcedSpendLimitReachedError)
        assert error.type == "rate_limit_error"
        assert error.error_code == "enforced_spend_limit_reached"
        assert "retry-after" not in error.response.headers
        assert error.response.headers["anthropic-ratelimit-requests-remaining"] == "10"

        server.spend_limit_reached = False
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    stats = server.stats()
    assert (stats.spend_limited, stats.rate_limited, stats.accepted) == (1, 0, 1)


def test_a_specified_spend_limit_is_a_400() -> None:
    with (
        FakeAnthropic(spend_limit_reached=True, spend_limit_kind="specified") as server,
        sdk(server) as client,
        pytest.raises(anthropic.BadRequestError) as caught,
    ):
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert caught.value.type == "invalid_request_error"
    assert str(caught.value.api_message).startswith("You have reached your specified API usage")


# --------------------------------------------------------------------------- caching


def test_cache_write_then_read_and_only_writes_count_for_itpm(clock: ManualClock) -> None:
    cached = prompt_parts({"system": LONG_SYSTEM})[0].tokens
    assert cached >= 1_024
    first: list[MessageParam] = [{"role": "user", "content": "First question?"}]
    second: list[MessageParam] = [{"role": "user", "content": "Another, longer question?"}]
    with FakeAnthropic(itpm=100_000, clock=clock) as server, sdk(server) as client:
        one = client.messages.create(model=MODEL, max_tokens=8, system=LONG_SYSTEM, messages=first)
        two = client.messages.create(model=MODEL, max_tokens=8, system=LONG_SYSTEM, messages=second)
        other_model = client.messages.create(
            model="claude-fake-2", max_tokens=8, system=LONG_SYSTEM, messages=second
        )
    total_one = count_input_tokens({"system": LONG_SYSTEM, "messages": first})
    total_two = count_input_tokens({"system": LONG_SYSTEM, "messages": second})
    assert one.usage.cache_creation_input_tokens == cached
    assert one.usage.cache_read_input_tokens == 0
    assert one.usage.input_tokens == total_one - cached
    assert one.usage.cache_creation is not None
    assert one.usage.cache_creation.ephemeral_5m_input_tokens == cached
    assert two.usage.cache_creation_input_tokens == 0
    assert two.usage.cache_read_input_tokens == cached
    assert two.usage.input_tokens == total_two - cached
    assert other_model.usage.cache_creation_input_tokens == cached  # caches are per model
    itpm = total_one + (total_two - cached) + total_two
    assert server.stats().itpm_tokens == itpm
    assert server.levels()["input_tokens"] == 100_000 - itpm
    assert [entry.cache_read_input_tokens for entry in server.accepted()] == [0, cached, 0]


def test_cache_reads_can_count_as_for_older_models(clock: ManualClock) -> None:
    with (
        FakeAnthropic(itpm=100_000, cache_reads_count=True, clock=clock) as server,
        sdk(server) as client,
    ):
        for _ in range(2):
            client.messages.create(model=MODEL, max_tokens=8, system=LONG_SYSTEM, messages=HELLO)
    total = count_input_tokens({"system": LONG_SYSTEM, **HELLO_REQUEST})
    assert server.stats().cache_read_input_tokens > 0
    assert server.stats().itpm_tokens == 2 * total


def test_cache_entries_expire_and_short_prefixes_are_not_cached(clock: ManualClock) -> None:
    short: list[TextBlockParam] = [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
    ]
    hour: list[TextBlockParam] = [
        {**LONG_SYSTEM[0], "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    with FakeAnthropic(clock=clock) as server, sdk(server) as client:

        def usage(system: list[TextBlockParam]) -> tuple[int | None, int | None]:
            u = client.messages.create(
                model=MODEL, max_tokens=8, system=system, messages=HELLO
            ).usage
            return u.cache_creation_input_tokens, u.cache_read_input_tokens

        assert usage(short) == (0, 0)
        created, _ = usage(LONG_SYSTEM)
        assert created
        clock.advance(299)
        assert usage(LONG_SYSTEM) == (0, created)  # read, and the 5 minutes start again
        clock.advance(299)
        assert usage(LONG_SYSTEM) == (0, created)
        clock.advance(301)
        assert usage(LONG_SYSTEM) == (created, 0)
        # The 1 h TTL is another breakpoint setting, but the same prefix: a read.
        assert usage(hour) == (0, created)
        server.clear_cache()
        with sdk(server) as again:
            message = again.messages.create(model=MODEL, max_tokens=8, system=hour, messages=HELLO)
        assert message.usage.cache_creation is not None
        assert message.usage.cache_creation.ephemeral_1h_input_tokens == created


# --------------------------------------------------------------------------- odds and ends


def test_bad_requests_are_400_and_unknown_paths_404(unlimited: FakeAnthropic) -> None:
    with sdk(unlimited) as client, pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=0, messages=HELLO)

    def post(path: str, data: bytes) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(unlimited.base_url + path, data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    status, body = post("/v1/messages", b"{not json")
    assert (status, body["error"]["type"]) == (400, "invalid_request_error")
    status, body = post("/v1/complete", b"{}")
    assert (status, body["error"]["type"]) == (404, "not_found_error")
    assert unlimited.stats().invalid == 1


def test_latency_makes_answers_take_time() -> None:
    # Lower bounds only: a loaded machine may be slower, never faster.
    with (
        FakeAnthropic(latency_s=0.1, latency_per_output_token_s=0.01) as server,
        sdk(server) as client,
    ):
        start = time.monotonic()
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
        assert time.monotonic() - start >= 0.2  # 0.1 s + 10 tokens x 0.01 s
        start = time.monotonic()
        with client.messages.stream(model=MODEL, max_tokens=10, messages=HELLO) as stream:
            stream.until_done()
        assert time.monotonic() - start >= 0.1


def test_accepted_log_and_reset_stats(clock: ManualClock) -> None:
    with FakeAnthropic(clock=clock, output_tokens=5) as server, sdk(server) as client:
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        clock.advance(2.5)
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        log = server.accepted()
        assert [entry.at for entry in log] == [1000.0, 1002.5]
        assert [(e.input_tokens, e.output_tokens) for e in log] == [
            (count_input_tokens(HELLO_REQUEST), 5)
        ] * 2
        server.reset_stats()
        assert server.stats().requests == 0
        assert server.accepted() == []
    server.close()  # a second close is harmless


async def test_the_async_client_works_too(clock: ManualClock) -> None:
    with FakeAnthropic(rpm=2, clock=clock) as server:
        async with anthropic.AsyncAnthropic(
            base_url=server.base_url,
            api_key="test",
            max_retries=0,
            http_client=anthropic.DefaultAsyncHttpxClient(verify=False),
        ) as client:
            message = await client.messages.create(model=MODEL, max_tokens=1024, messages=HELLO)
            assert message.usage.output_tokens == default_output_tokens(HELLO_REQUEST)
            async with client.messages.stream(
                model=MODEL, max_tokens=1024, messages=HELLO
            ) as stream:
                text = "".join([chunk async for chunk in stream.text_stream])
                final = await stream.get_final_message()
            assert message.content[0].type == "text"
            assert text == message.content[0].text
            assert final.usage.output_tokens == message.usage.output_tokens
            with pytest.raises(anthropic.RateLimitError) as caught:
                await client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
            assert caught.value.response.headers["retry-after"] == "30"
