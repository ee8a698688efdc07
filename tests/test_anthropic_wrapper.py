"""ratelimit.anthropic.wrap: the real SDK client against the fake API and a real Redis.

Rates refill over days (``per=SLOW``) unless a test is about refills, so bucket levels
read back exactly what was charged; the fake's buckets are the provider's, and its
request counts show what went out over HTTP.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, assert_type

import anthropic
import httpx2
import pytest
import redis
from anthropic.lib.streaming import MessageStreamManager
from anthropic.resources.models import Models
from anthropic.types import Message, MessageParam, TextBlockParam
from fake_anthropic import FakeAnthropic, count_input_tokens, prompt_parts

import ratelimit.anthropic.retry as anthropic_retry
from ratelimit import (
    Budget,
    BudgetExceeded,
    InvalidArgument,
    InvalidArgumentType,
    Limiter,
    Rate,
)
from ratelimit.anthropic import (
    IMAGE_TOKENS,
    AsyncLimitedAnthropic,
    LimitedAnthropic,
    NoQuotaForModel,
    estimate_input_tokens,
    wrap,
)
from ratelimit.cache import ResponseCache
from ratelimit.pricing import Pricing
from ratelimit.routing import Fallback

MODEL = "claude-sonnet-4-6"
CHEAP = "claude-haiku-4-5"
FAMILY = "claude-sonnet-4"
HELLO: list[MessageParam] = [{"role": "user", "content": "Say hello, briefly."}]
LONG_SYSTEM: list[TextBlockParam] = [
    {"type": "text", "text": "You are terse. " * 400, "cache_control": {"type": "ephemeral"}}
]
#: Seconds over which a test's rates refill: slow enough that levels stay exact.
SLOW = 10**9
BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_anthropic.py"


def rates(
    requests: float = 100, input_tokens: float = 100_000, output_tokens: float = 20_000
) -> dict[str, Rate]:
    return {
        "requests": Rate(requests, per=SLOW),
        "input_tokens": Rate(input_tokens, per=SLOW),
        "output_tokens": Rate(output_tokens, per=SLOW),
    }


def sdk(server: FakeAnthropic | str, max_retries: int = 2) -> anthropic.Anthropic:
    """The real client (the SDK's default of 2 retries unless told), without TLS setup."""
    url = server if isinstance(server, str) else server.base_url
    return anthropic.Anthropic(
        base_url=url,
        api_key="test",
        max_retries=max_retries,
        http_client=anthropic.DefaultHttpxClient(verify=False),
    )


def async_sdk(server: FakeAnthropic) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=server.base_url,
        api_key="test",
        http_client=anthropic.DefaultAsyncHttpxClient(verify=False),
    )


def levels(client: LimitedAnthropic, model: str = MODEL) -> dict[str, float]:
    state = client.guard.limiter(model).state()
    return {dim: state.rate(dim).available for dim in ("requests", "input_tokens", "output_tokens")}


def budget_limiter(client: LimitedAnthropic) -> Limiter:
    assert client.guard.budget is not None
    return client.guard.budget


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def limited(fake: FakeAnthropic, redis_url: str) -> Iterator[LimitedAnthropic]:
    with wrap(sdk(fake), redis_url, limits={FAMILY: rates()}, budget=Budget(10)) as client:
        yield client


# --------------------------------------------------------------------------- settling


def test_create_settles_with_the_real_usage(limited: LimitedAnthropic) -> None:
    message = limited.messages.create(model=MODEL, max_tokens=256, messages=HELLO)
    assert_type(message, Message)
    usage = message.usage
    assert usage.input_tokens == count_input_tokens({"messages": HELLO})
    assert levels(limited) == pytest.approx(
        {
            "requests": 99,
            "input_tokens": 100_000 - usage.input_tokens,
            "output_tokens": 20_000 - usage.output_tokens,
        },
        abs=0.05,
    )
    cost = Pricing.default().cost(MODEL, usage)
    budget = budget_limiter(limited).state().budget("usd")
    assert (budget.spent, budget.reserved) == (cost, Decimal(0))
    [entry] = budget_limiter(limited).ledger_entries()
    assert (entry.kind, entry.model, entry.cost_usd) == ("settled", MODEL, cost)
    assert entry.tokens["input"] == usage.input_tokens
    assert entry.tokens["output"] == usage.output_tokens
    assert entry.tags == {"request_id": message._request_id}


def test_admission_with_a_budget_is_one_script_call(
    limited: LimitedAnthropic, r: redis.Redis
) -> None:
    limited.messages.create(model=MODEL, max_tokens=8, messages=HELLO)  # loads the scripts
    r.config_resetstat()
    limited.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    calls = r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    # One to admit (family and budget together), one to settle. The fake sends no
    # rate-limit headers here, so there is nothing to observe.
    assert calls == 2


def test_cache_writes_count_as_input_and_cache_reads_do_not(limited: LimitedAnthropic) -> None:
    cached = prompt_parts({"system": LONG_SYSTEM})[0].tokens
    first = limited.messages.create(model=MODEL, max_tokens=8, system=LONG_SYSTEM, messages=HELLO)
    assert first.usage.cache_creation_input_tokens == cached
    charged = first.usage.input_tokens + cached
    assert levels(limited)["input_tokens"] == pytest.approx(100_000 - charged, abs=0.05)

    second = limited.messages.create(model=MODEL, max_tokens=8, system=LONG_SYSTEM, messages=HELLO)
    assert second.usage.cache_read_input_tokens == cached
    charged += second.usage.input_tokens  # the read is free, as for the API's ITPM
    assert levels(limited)["input_tokens"] == pytest.approx(100_000 - charged, abs=0.05)

    entries = budget_limiter(limited).ledger_entries()
    assert entries[0].tokens["cache_write_5m"] == cached
    assert entries[1].tokens["cache_read"] == cached
    pricing = Pricing.default()
    assert [e.cost_usd for e in entries] == [
        pricing.cost(MODEL, first.usage),
        pricing.cost(MODEL, second.usage),
    ]


def test_stream_reserves_then_settles_from_the_final_message(limited: LimitedAnthropic) -> None:
    request: dict[str, Any] = {"messages": HELLO}
    manager = limited.messages.stream(model=MODEL, max_tokens=256, messages=HELLO)
    assert_type(manager, MessageStreamManager[None])
    with manager as stream:
        # Admitted and in flight: the estimate and max_tokens are held.
        assert levels(limited) == pytest.approx(
            {
                "requests": 99,
                "input_tokens": 100_000 - estimate_input_tokens(request),
                "output_tokens": 20_000 - 256,
            },
            abs=0.05,
        )
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text) == 4 * final.usage.output_tokens
    assert levels(limited) == pytest.approx(
        {
            "requests": 99,
            "input_tokens": 100_000 - final.usage.input_tokens,
            "output_tokens": 20_000 - final.usage.output_tokens,
        },
        abs=0.05,
    )
    [entry] = budget_limiter(limited).ledger_entries()
    assert entry.cost_usd == Pricing.default().cost(MODEL, final.usage)


def test_an_abandoned_stream_settles_what_it_used_so_far(redis_url: str) -> None:
    with (
        FakeAnthropic(output_tokens=64) as server,
        wrap(sdk(server), redis_url, limits={FAMILY: rates()}, budget=Budget(10)) as client,
    ):
        with client.messages.stream(model=MODEL, max_tokens=256, messages=HELLO) as stream:
            first = next(iter(stream.text_stream))  # one delta of the 64 tokens, then leave
        # Output so far: the larger of the count reported (1) and the text's bytes / 3.
        used = math.ceil(len(first.encode()) / 3)
        assert 1 < used < 64
        assert levels(client)["output_tokens"] == pytest.approx(20_000 - used, abs=0.05)
        [entry] = budget_limiter(client).ledger_entries()
        assert entry.kind == "settled"
        assert entry.tokens["output"] == used
        assert entry.tokens["input"] == count_input_tokens({"messages": HELLO})


def test_create_with_stream_true_is_metered_to_its_end_or_close(limited: LimitedAnthropic) -> None:
    events = limited.messages.create(model=MODEL, max_tokens=256, messages=HELLO, stream=True)
    assert_type(events, anthropic.Stream[anthropic.types.RawMessageStreamEvent])
    kinds = [event.type for event in events]
    assert kinds[-1] == "message_stop"
    whole = budget_limiter(limited).ledger_entries()[-1]
    assert (
        whole.tokens["output"]
        == limited.messages.create(model=MODEL, max_tokens=256, messages=HELLO).usage.output_tokens
    )

    cut = limited.messages.create(model=MODEL, max_tokens=256, messages=HELLO, stream=True)
    for event in cut:
        if event.type == "content_block_delta":
            break
    cut.close()
    entries = budget_limiter(limited).ledger_entries()
    assert len(entries) == 3
    assert 1 < int(entries[-1].tokens["output"]) < int(whole.tokens["output"])
    assert budget_limiter(limited).state().budget("usd").reserved == 0


# --------------------------------------------------------------------------- errors and retries


def test_an_error_before_any_token_cancels_the_permit(limited: LimitedAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError):
        limited.messages.create(model=MODEL, max_tokens=0, messages=HELLO)
    assert levels(limited) == pytest.approx(
        {"requests": 100, "input_tokens": 100_000, "output_tokens": 20_000}, abs=0.05
    )
    budget = budget_limiter(limited).state().budget("usd")
    assert (budget.spent, budget.reserved) == (Decimal(0), Decimal(0))
    [entry] = budget_limiter(limited).ledger_entries()
    assert (entry.kind, entry.cost_usd) == ("cancelled", Decimal(0))


def test_a_connection_error_cancels_and_is_retried(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(anthropic_retry, "RETRY_INITIAL_S", 0.01)
    nowhere = FakeAnthropic()  # bound, never started, then closed: its port refuses
    url = nowhere.base_url
    nowhere.close()
    with wrap(sdk(url), redis_url, limits={FAMILY: rates()}, max_attempts=3) as client:
        with pytest.raises(anthropic.APIConnectionError):
            client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
        assert levels(client)["requests"] == pytest.approx(100, abs=0.05)


class Overloaded(httpx2.BaseTransport):
    """Answers the first ``failures`` Messages calls with a 529, then forwards them."""

    def __init__(self, failures: int) -> None:
        self.inner = httpx2.HTTPTransport(verify=False)
        self.failures = failures
        self.calls = 0

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.calls += 1
        if self.calls <= self.failures:
            body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return httpx2.Response(529, json=body, headers={"retry-after-ms": "20"})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_529_is_retried_through_the_limiter(fake: FakeAnthropic, redis_url: str) -> None:
    transport = Overloaded(failures=1)
    client = anthropic.Anthropic(
        base_url=fake.base_url,
        api_key="test",
        http_client=anthropic.DefaultHttpxClient(transport=transport),
    )
    with wrap(client, redis_url, limits={FAMILY: rates()}, budget=Budget(10)) as limited:
        message = limited.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
        assert transport.calls == 2
        assert fake.stats().accepted == 1
        kinds = [entry.kind for entry in budget_limiter(limited).ledger_entries()]
        assert kinds == ["cancelled", "settled"]
        # Two admissions, one given back: one request charged.
        assert levels(limited)["requests"] == pytest.approx(99, abs=0.05)
        assert message.usage.output_tokens > 0


def test_a_429_holds_every_process_back(redis_url: str) -> None:
    # The provider allows 2 requests a second; our quota says 100, so the third goes out
    # and meets a 429 with a retry-after of 1 s.
    generous = {FAMILY: {"requests": Rate(100, per=1)}}
    with (
        FakeAnthropic(rpm=2, minute_s=1.0) as server,
        wrap(sdk(server), redis_url, limits=generous, max_attempts=1) as client,
    ):
        for _ in range(2):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        # Every process sharing the quota now waits out the retry-after.
        assert client.guard.limiter(MODEL).try_acquire() is None
        assert client.guard.limiter(MODEL).state().rate("requests").available < 0
    stats = server.stats()
    assert (stats.requests, stats.accepted, stats.rate_limited) == (3, 2, 1)


def test_a_429_is_retried_through_the_limiter(redis_url: str) -> None:
    generous = {FAMILY: {"requests": Rate(100, per=1)}}
    with (
        FakeAnthropic(rpm=2, minute_s=1.0) as server,
        wrap(sdk(server), redis_url, limits=generous, budget=Budget(10), max_attempts=3) as client,
    ):
        for _ in range(3):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        kinds = [entry.kind for entry in budget_limiter(client).ledger_entries()]
    # The third call met one 429, was held back a whole retry-after, and then passed.
    stats = server.stats()
    assert (stats.requests, stats.accepted, stats.rate_limited) == (4, 3, 1)
    assert kinds == ["settled", "settled", "cancelled", "settled"]


def test_a_spend_limit_429_is_final(redis_url: str) -> None:
    with (
        FakeAnthropic(spend_limit_reached=True) as server,
        wrap(sdk(server), redis_url, limits={FAMILY: rates()}, max_attempts=5) as client,
    ):
        with pytest.raises(anthropic.EnforcedSpendLimitReachedError):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert server.stats().requests == 1
        # Cancelled, and no hold: a spend limit is not a rate limit.
        assert levels(client)["requests"] == pytest.approx(100, abs=0.05)
        assert client.guard.limiter(MODEL).try_acquire() is not None


def test_the_sdk_never_retries_behind_the_limiter(redis_url: str) -> None:
    generous = {FAMILY: {"requests": Rate(100, per=1)}}
    with (
        FakeAnthropic(rpm=1, minute_s=1.0) as server,
        wrap(sdk(server, max_retries=5), redis_url, limits=generous, max_attempts=1) as client,
    ):
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert server.stats().requests == 2  # the SDK's 5 retries did not happen
        # A copy with other options keeps the limits: it waits out the hold, then passes.
        copy = client.with_options(timeout=30.0)
        assert_type(copy, LimitedAnthropic)
        copy.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    stats = server.stats()
    assert (stats.requests, stats.accepted, stats.rate_limited) == (3, 2, 1)


def test_budget_exhaustion_raises_before_any_request(fake: FakeAnthropic, redis_url: str) -> None:
    with wrap(sdk(fake), redis_url, limits={FAMILY: rates()}, budget=Budget("0.01")) as client:
        # Another process spent nearly all of today's budget.
        spender = budget_limiter(client)
        spender.acquire(usd="0.0099").settle(usd="0.0099")
        with pytest.raises(BudgetExceeded):
            client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
        assert fake.stats().requests == 0
        assert levels(client)["requests"] == pytest.approx(100, abs=0.05)


# --------------------------------------------------------------------------- families


def test_models_of_one_family_share_one_quota(fake: FakeAnthropic, redis_url: str) -> None:
    limits = {FAMILY: rates(), "claude-sonnet-4-6": rates(), "*": rates(requests=10)}
    with wrap(sdk(fake), redis_url, limits=limits) as client:
        assert client.guard.family("claude-sonnet-4-0") == FAMILY
        assert client.guard.family("claude-sonnet-4-20250514") == FAMILY
        assert client.guard.family("claude-sonnet-4-6") == "claude-sonnet-4-6"  # longest wins
        assert client.guard.family(CHEAP) == "*"
        for model in ("claude-sonnet-4-0", "claude-sonnet-4-20250514", "claude-sonnet-4-6", CHEAP):
            client.messages.create(model=model, max_tokens=8, messages=HELLO)
        requests = {
            key: client.guard.limiter(key).state().rate("requests").available
            for key in (FAMILY, "claude-sonnet-4-6", "*")
        }
        assert requests == pytest.approx({FAMILY: 98, "claude-sonnet-4-6": 99, "*": 9}, abs=0.05)
        assert client.guard.limiter("claude-sonnet-4-0").name == f"anthropic:{FAMILY}"


def test_a_model_without_limits_is_refused_before_anything(
    fake: FakeAnthropic, r: redis.Redis
) -> None:
    with wrap(sdk(fake), r, limits={FAMILY: rates()}) as client:
        with pytest.raises(NoQuotaForModel, match="claude-haiku-4-5"):
            client.messages.create(model=CHEAP, max_tokens=8, messages=HELLO)
        assert isinstance(NoQuotaForModel("x"), InvalidArgument)
    assert fake.stats().requests == 0


def test_wrap_checks_its_arguments(fake: FakeAnthropic, r: redis.Redis) -> None:
    client = sdk(fake)
    client.close()  # never used: wrap refuses before anything
    with pytest.raises(InvalidArgument, match="unknown dimension"):
        wrap(client, r, limits={FAMILY: {"tokens": Rate(1)}})
    with pytest.raises(InvalidArgumentType):
        wrap(client, r, limits={FAMILY: {"requests": 5}})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgumentType):
        wrap(object(), r, limits={FAMILY: rates()})  # type: ignore[call-overload]
    with pytest.raises(InvalidArgument):
        wrap(client, r, limits={FAMILY: rates()}, max_attempts=0)
    with pytest.raises(InvalidArgument):
        wrap(client, r, limits={FAMILY: rates()}, estimate="exact")  # type: ignore[call-overload]


# --------------------------------------------------------------------------- estimates


@pytest.mark.parametrize(
    "request_",
    [
        {"messages": HELLO},
        {"system": LONG_SYSTEM, "messages": HELLO},
        {"system": "Be brief.", "messages": [{"role": "user", "content": "é€😀 " * 300}]},
        {
            "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "Look it up."},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}],
                },
            ],
        },
    ],
)
def test_the_local_estimate_errs_high(request_: dict[str, Any]) -> None:
    assert estimate_input_tokens(request_) >= count_input_tokens(request_)


def test_images_count_a_fixed_cost_not_their_bytes() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "A" * 300_000},
    }
    request = {"messages": [{"role": "user", "content": [image, {"type": "text", "text": "?"}]}]}
    estimate = estimate_input_tokens(request)
    assert IMAGE_TOKENS <= estimate < IMAGE_TOKENS + 100


def test_count_tokens_reserves_the_exact_count(fake: FakeAnthropic, redis_url: str) -> None:
    request: dict[str, Any] = {"system": "Be brief.", "messages": HELLO}
    with wrap(sdk(fake), redis_url, limits={FAMILY: rates()}, estimate="count_tokens") as client:
        with client.messages.stream(model=MODEL, max_tokens=64, **request) as stream:
            reserved = 100_000 - levels(client)["input_tokens"]
            stream.until_done()
        assert reserved == pytest.approx(count_input_tokens(request), abs=0.05)
    assert fake.stats().count_tokens == 1


def test_an_estimate_beyond_the_bucket_is_cut_to_it(fake: FakeAnthropic, redis_url: str) -> None:
    long: list[MessageParam] = [{"role": "user", "content": "word " * 1_000}]
    small = {FAMILY: rates(input_tokens=1_000)}
    assert estimate_input_tokens({"messages": long}) > 1_000
    with wrap(sdk(fake), redis_url, limits=small) as client:
        message = client.messages.create(model=MODEL, max_tokens=8, messages=long)
        # Settled at the real count, which the bucket owes until it refills.
        assert levels(client)["input_tokens"] == pytest.approx(
            1_000 - message.usage.input_tokens, abs=0.05
        )


def test_one_shot_iterables_are_read_once_and_sent_whole(limited: LimitedAnthropic) -> None:
    message = limited.messages.create(model=MODEL, max_tokens=8, messages=(m for m in HELLO))
    assert message.usage.input_tokens == count_input_tokens({"messages": HELLO})


# --------------------------------------------------------------------------- the rest of the client


def test_everything_else_is_the_real_clients(
    limited: LimitedAnthropic, fake: FakeAnthropic
) -> None:
    before = levels(limited)
    counted = limited.messages.count_tokens(model=MODEL, messages=HELLO)
    assert counted.input_tokens == count_input_tokens({"messages": HELLO})
    assert levels(limited) == pytest.approx(before, abs=0.05)
    assert isinstance(limited.models, Models)
    assert isinstance(limited.messages, anthropic.resources.messages.Messages)
    assert limited.api_key == "test"
    raw = limited.messages.with_raw_response.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert raw.parse().usage.output_tokens > 0
    assert fake.stats().accepted == 1


def test_importing_ratelimit_does_not_import_anthropic() -> None:
    code = "import sys, ratelimit; assert 'anthropic' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    blocked = (
        "import sys; sys.modules['anthropic'] = None\n"
        "try:\n    import ratelimit.anthropic\nexcept ImportError as e:\n    print(e)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", blocked], check=True, capture_output=True, text=True
    )
    assert "llm-quota-guard[anthropic]" in run.stdout


# --------------------------------------------------------------------------- routing and caching


def test_a_policy_falls_back_when_the_preferred_quota_is_full(
    fake: FakeAnthropic, redis_url: str
) -> None:
    limits = {MODEL: rates(requests=1), CHEAP: rates()}
    policy = Fallback([MODEL, CHEAP], max_wait_s=0)
    with wrap(sdk(fake), redis_url, limits=limits, budget=Budget(10), policy=policy) as client:
        first = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        second = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert (first.model, second.model) == (MODEL, CHEAP)
        entries = budget_limiter(client).ledger_entries()
    assert [entry.model for entry in entries] == [MODEL, CHEAP]
    assert fake.stats().requests == 2


def test_a_cache_hit_skips_limiter_and_api_and_records_the_saving(
    fake: FakeAnthropic, redis_url: str, r: redis.Redis
) -> None:
    cache = ResponseCache(r)
    with wrap(
        sdk(fake), redis_url, limits={FAMILY: rates()}, budget=Budget(10), cache=cache
    ) as client:
        deterministic = {"temperature": 0}
        first = client.messages.create(
            model=MODEL, max_tokens=64, messages=HELLO, extra_body=deterministic
        )
        after_first = levels(client)
        again = client.messages.create(
            model=MODEL, max_tokens=64, messages=HELLO, extra_body=deterministic
        )
        assert again == first
        assert fake.stats().requests == 1
        assert levels(client) == pytest.approx(after_first, abs=0.05)
        budget = budget_limiter(client)
        hit = budget.ledger_entries()[-1]
        cost = Pricing.default().cost(MODEL, first.usage)
        assert (hit.kind, hit.cost_usd, hit.saved_usd) == ("cache_hit", Decimal(0), cost)
        assert budget.saved() == {hit.day: {MODEL: cost}}
        assert budget.state().budget("usd").spent == cost  # only the first call spent


# --------------------------------------------------------------------------- asyncio


async def test_the_async_client_settles_streams_and_cancels_errors(redis_url: str) -> None:
    with FakeAnthropic(output_tokens=40) as server:
        async with wrap(
            async_sdk(server), redis_url, limits={FAMILY: rates()}, budget=Budget(10)
        ) as client:
            assert_type(client, AsyncLimitedAnthropic)
            message = await client.messages.create(model=MODEL, max_tokens=256, messages=HELLO)
            assert_type(message, Message)
            async with client.messages.stream(model=MODEL, max_tokens=256, messages=HELLO) as s:
                final = await s.get_final_message()
            events = await client.messages.create(
                model=MODEL, max_tokens=256, messages=HELLO, stream=True
            )
            async for _ in events:
                pass
            with pytest.raises(anthropic.BadRequestError):
                await client.messages.create(model=MODEL, max_tokens=0, messages=HELLO)

            budget = client.guard.budget
            assert budget is not None
            entries = await budget.ledger_entries()
            state = await client.guard.limiter(MODEL).state()
    assert [e.kind for e in entries] == ["settled", "settled", "settled", "cancelled"]
    assert [e.tokens["output"] for e in entries[:3]] == [40, 40, 40]
    assert final.usage.output_tokens == message.usage.output_tokens == 40
    assert state.rate("requests").available == pytest.approx(97, abs=0.05)
    assert state.rate("output_tokens").available == pytest.approx(20_000 - 120, abs=0.05)


async def test_the_async_client_holds_back_after_a_429(redis_url: str) -> None:
    generous = {FAMILY: {"requests": Rate(100, per=1)}}
    with FakeAnthropic(rpm=1, minute_s=1.0) as server:
        async with wrap(async_sdk(server), redis_url, limits=generous, max_attempts=2) as client:
            await client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
            await client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    stats = server.stats()
    assert (stats.requests, stats.accepted, stats.rate_limited) == (3, 2, 1)


# --------------------------------------------------------------------------- the benchmark


@pytest.mark.slow
def test_quick_benchmark_has_no_429_with_the_wrapper(tmp_path: Path) -> None:
    # Once, on the private server the benchmark starts itself: it spawns 8
    # processes three times, too slow to repeat per engine.
    saved = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(saved)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    report = json.loads(saved.read_text(encoding="utf-8"))
    runs = report["runs"]
    assert set(runs) == {"plain", "wrapped", "wrapped_exact"}
    assert runs["plain"]["requests"] > 0
    for kind in ("wrapped", "wrapped_exact"):
        assert runs[kind]["rate_limited"] == 0, f"{kind} met 429s:\n{run.stdout}"
        assert runs[kind]["succeeded"] > 0
        assert runs[kind]["failed"] == 0
    for heading in ("plain SDK", "wrapped, exact", "429 responses", "share of the limit used"):
        assert heading in run.stdout
