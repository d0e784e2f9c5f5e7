"""Per-tenant admission control, in-process and shared through a real Redis.

Every behaviour test runs against both implementations. The Redis ones use the server at
``BERTH_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``) under a fresh key
prefix, and skip when it cannot be reached.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from apps.gateway.admission import (
    AdmissionRefused,
    AdmissionUnavailable,
    Limits,
    LocalAdmission,
    RedisAdmission,
    admission_for,
)

REDIS_URL = os.environ.get("BERTH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# Nothing listens on port 1; a connection there is refused at once.
UNREACHABLE_REDIS_URL = "redis://:s3cret@127.0.0.1:1/0"

# Limits loose enough that only the one under test can refuse.
PLENTY = 1_000


async def redis_or_skip() -> Redis:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        await client.ping()
    except RedisError as error:
        await client.aclose()
        pytest.skip(f"no Redis reachable at {REDIS_URL} ({error}); set BERTH_TEST_REDIS_URL to run these tests")
    return client


async def keys_under(client: Redis, prefix: str) -> list[bytes]:
    return [key async for key in client.scan_iter(match=f"{prefix}*")]


@pytest.fixture
async def redis_store():
    """A raw client and a key prefix no other test uses; the keys are deleted afterwards."""
    client = await redis_or_skip()
    prefix = f"berth-test:admission:{uuid.uuid4().hex}:"
    yield client, prefix
    leftover = await keys_under(client, prefix)
    if leftover:
        await client.delete(*leftover)
    await client.aclose()


@pytest.fixture(params=["local", "redis"])
async def admission(request):
    if request.param == "local":
        subject = LocalAdmission()
        yield subject
        await subject.close()
        return
    client = await redis_or_skip()
    prefix = f"berth-test:admission:{uuid.uuid4().hex}:"
    shared = RedisAdmission(REDIS_URL, key_prefix=prefix)
    yield shared
    await shared.close()
    leftover = await keys_under(client, prefix)
    if leftover:
        await client.delete(*leftover)
    await client.aclose()


async def refusal(admission, tenant: str, limits: Limits) -> AdmissionRefused:
    with pytest.raises(AdmissionRefused) as caught:
        await admission.acquire(tenant, limits)
    return caught.value


# --- both implementations ---------------------------------------------------------------


async def test_a_burst_is_admitted_then_refused_with_retry_after_about_one_over_the_rate(admission):
    limits = Limits(rate_per_s=20, burst=3, max_concurrent=PLENTY)
    for _ in range(3):
        await admission.acquire("acme", limits)

    refused = await refusal(admission, "acme", limits)

    assert refused.reason == "rate"
    assert refused.tenant == "acme"
    assert 0.02 < refused.retry_after_s <= 0.05
    assert refused.message == "tenant 'acme' is over its rate limit of 20 requests/s; retry after 1 s"
    assert str(refused) == refused.message


async def test_a_slow_rate_asks_for_a_longer_wait_in_whole_seconds(admission):
    limits = Limits(rate_per_s=0.5, burst=1, max_concurrent=PLENTY)
    await admission.acquire("acme", limits)

    refused = await refusal(admission, "acme", limits)

    assert refused.retry_after_s == pytest.approx(2.0, abs=0.05)
    assert refused.message == "tenant 'acme' is over its rate limit of 0.5 requests/s; retry after 2 s"


async def test_tokens_refill_over_time_up_to_the_burst(admission):
    limits = Limits(rate_per_s=10, burst=2, max_concurrent=PLENTY)
    for _ in range(2):
        await admission.acquire("acme", limits)
    await refusal(admission, "acme", limits)

    await asyncio.sleep(0.12)  # 1.2 tokens' worth at 10/s
    await admission.acquire("acme", limits)
    assert (await refusal(admission, "acme", limits)).reason == "rate"

    await asyncio.sleep(0.3)  # 3 tokens' worth, but the bucket holds 2
    for _ in range(2):
        await admission.acquire("acme", limits)
    assert (await refusal(admission, "acme", limits)).reason == "rate"


async def test_the_concurrency_limit_refuses_one_over_and_admits_again_after_a_release(admission):
    limits = Limits(rate_per_s=PLENTY, burst=PLENTY, max_concurrent=2)
    first = await admission.acquire("acme", limits)
    await admission.acquire("acme", limits)

    refused = await refusal(admission, "acme", limits)
    assert refused.reason == "concurrency"
    assert refused.retry_after_s > 0
    assert refused.message == "tenant 'acme' has 2 requests in flight, its limit; retry when one finishes"

    await admission.release(first)
    await admission.acquire("acme", limits)
    assert (await refusal(admission, "acme", limits)).reason == "concurrency"


async def test_releasing_a_ticket_twice_frees_only_its_own_slot(admission):
    limits = Limits(rate_per_s=PLENTY, burst=PLENTY, max_concurrent=2)
    first = await admission.acquire("acme", limits)
    await admission.acquire("acme", limits)

    await admission.release(first)
    await admission.release(first)

    await admission.acquire("acme", limits)
    assert (await refusal(admission, "acme", limits)).reason == "concurrency"


async def test_a_concurrency_refusal_takes_no_rate_token(admission):
    limits = Limits(rate_per_s=0.01, burst=2, max_concurrent=1)
    held = await admission.acquire("acme", limits)  # the first of two tokens
    for _ in range(5):
        assert (await refusal(admission, "acme", limits)).reason == "concurrency"

    await admission.release(held)
    second = await admission.acquire("acme", limits)  # the second token is still there
    await admission.release(second)

    assert (await refusal(admission, "acme", limits)).reason == "rate"


async def test_a_rate_refusal_holds_no_slot(admission):
    limits = Limits(rate_per_s=20, burst=1, max_concurrent=1)
    await admission.release(await admission.acquire("acme", limits))
    assert (await refusal(admission, "acme", limits)).reason == "rate"

    await asyncio.sleep(0.07)

    await admission.acquire("acme", limits)  # the refused request left the one slot free


async def test_tenants_are_independent(admission):
    by_rate = Limits(rate_per_s=0.01, burst=1, max_concurrent=PLENTY)
    await admission.acquire("acme", by_rate)
    assert (await refusal(admission, "acme", by_rate)).reason == "rate"
    await admission.acquire("globex", by_rate)

    by_concurrency = Limits(rate_per_s=PLENTY, burst=PLENTY, max_concurrent=1)
    await admission.acquire("initech", by_concurrency)
    assert (await refusal(admission, "initech", by_concurrency)).reason == "concurrency"
    await admission.acquire("umbrella", by_concurrency)


@pytest.mark.parametrize(
    ("limits", "reason", "message"),
    [
        (
            Limits(rate_per_s=0, burst=10, max_concurrent=10),
            "rate",
            "tenant 'acme' has a rate limit of 0 requests/s, so no request is admitted; ask an operator to raise it",
        ),
        (
            Limits(rate_per_s=10, burst=0, max_concurrent=10),
            "rate",
            "tenant 'acme' has a burst of 0 requests, so no request is admitted; ask an operator to raise it",
        ),
        (
            Limits(rate_per_s=10, burst=10, max_concurrent=0),
            "concurrency",
            "tenant 'acme' has a concurrency limit of 0 requests in flight, so no request is admitted; "
            "ask an operator to raise it",
        ),
    ],
    ids=["rate-0", "burst-0", "max-concurrent-0"],
)
async def test_a_zero_limit_refuses_everything_with_a_clear_message(admission, limits, reason, message):
    for _ in range(3):
        refused = await refusal(admission, "acme", limits)
        assert refused.reason == reason
        assert refused.message == message
        assert refused.retry_after_s > 0


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"rate_per_s": -1.0, "burst": 1, "max_concurrent": 1}, "rate_per_s"),
        ({"rate_per_s": float("inf"), "burst": 1, "max_concurrent": 1}, "rate_per_s"),
        ({"rate_per_s": 1.0, "burst": -1, "max_concurrent": 1}, "burst"),
        ({"rate_per_s": 1.0, "burst": 1, "max_concurrent": -1}, "max_concurrent"),
    ],
)
def test_limits_reject_impossible_values_naming_the_field(limits, field):
    with pytest.raises(ValueError, match=f"Limits.{field} must be"):
        Limits(**limits)


# --- Redis only -------------------------------------------------------------------------


async def test_two_gateways_share_one_bucket_and_one_concurrency_pool(redis_store):
    _, prefix = redis_store
    one = RedisAdmission(REDIS_URL, key_prefix=prefix)
    other = RedisAdmission(REDIS_URL, key_prefix=prefix)
    try:
        by_rate = Limits(rate_per_s=0.01, burst=2, max_concurrent=PLENTY)
        await one.acquire("acme", by_rate)
        await other.acquire("acme", by_rate)
        assert (await refusal(one, "acme", by_rate)).reason == "rate"
        assert (await refusal(other, "acme", by_rate)).reason == "rate"

        by_concurrency = Limits(rate_per_s=PLENTY, burst=PLENTY, max_concurrent=2)
        await one.acquire("globex", by_concurrency)
        held_by_other = await other.acquire("globex", by_concurrency)
        refused = await refusal(one, "globex", by_concurrency)
        assert refused.message == "tenant 'globex' has 2 requests in flight, its limit; retry when one finishes"

        await other.release(held_by_other)
        await one.acquire("globex", by_concurrency)
        assert (await refusal(other, "globex", by_concurrency)).reason == "concurrency"
    finally:
        await one.close()
        await other.close()


async def test_a_tenant_over_its_rate_is_refused_without_a_round_trip_until_a_token_is_due(redis_store):
    _, prefix = redis_store
    one = RedisAdmission(REDIS_URL, key_prefix=prefix)
    other = RedisAdmission(REDIS_URL, key_prefix=prefix)
    calls = 0
    script = one._acquire_script

    async def counted(**kwargs):
        nonlocal calls
        calls += 1
        return await script(**kwargs)

    one._acquire_script = counted  # type: ignore[assignment]
    try:
        limits = Limits(rate_per_s=2, burst=1, max_concurrent=PLENTY)
        await one.acquire("acme", limits)
        first = await refusal(one, "acme", limits)  # asks Redis: empty for about 0.5 s
        assert calls == 2 and 0.3 < first.retry_after_s <= 0.5
        for _ in range(50):
            again = await refusal(one, "acme", limits)
            assert again.reason == "rate" and again.retry_after_s <= first.retry_after_s
        assert calls == 2  # fifty refusals, no round trip
        # The other gateway knows nothing of it: its refusal is its own call to Redis.
        assert (await refusal(other, "acme", limits)).reason == "rate"
        await asyncio.sleep(0.55)  # a token is due: Redis is asked again, and admits
        await one.acquire("acme", limits)
        assert calls == 3
        await refusal(one, "acme", limits)
        await refusal(one, "acme", limits)
        assert calls == 4
        # Other limits (an operator raised them) are asked of Redis at once.
        await asyncio.sleep(0.02)  # 20 tokens at the raised rate
        await one.acquire("acme", Limits(rate_per_s=1000, burst=5, max_concurrent=PLENTY))
        assert calls == 5
    finally:
        await one.close()
        await other.close()


def _admit_in_own_process(url: str, prefix: str, attempts: int, start_at: float, answers) -> None:
    """A gateway process's admission: ``attempts`` requests against a burst of 10 (run in a
    child process; puts how many were admitted)."""

    async def run() -> int:
        admission = RedisAdmission(url, key_prefix=prefix)
        limits = Limits(rate_per_s=0.01, burst=10, max_concurrent=PLENTY)
        admitted = 0
        try:
            await asyncio.sleep(max(0.0, start_at - time.time()))  # both processes at once
            for _ in range(attempts):
                try:
                    await admission.acquire("acme", limits)
                    admitted += 1
                except AdmissionRefused:
                    pass
        finally:
            await admission.close()
        return admitted

    answers.put(asyncio.run(run()))


async def test_two_gateway_processes_share_one_bucket(redis_store):
    import multiprocessing

    _, prefix = redis_store
    context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    start_at = time.time() + 3.0  # after both have started and imported
    processes = [
        context.Process(target=_admit_in_own_process, args=(REDIS_URL, prefix, 15, start_at, answers)) for _ in range(2)
    ]
    for process in processes:
        process.start()
    try:
        admitted = [await asyncio.to_thread(answers.get, True, 60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
    assert sum(admitted) == 10, admitted  # one bucket of 10 between them, not 10 each
    assert all(process.exitcode == 0 for process in processes)


async def test_a_slot_never_released_expires_after_slot_ttl(redis_store):
    _, prefix = redis_store
    crashed = RedisAdmission(REDIS_URL, key_prefix=prefix, slot_ttl_s=0.1)
    survivor = RedisAdmission(REDIS_URL, key_prefix=prefix, slot_ttl_s=0.1)
    limits = Limits(rate_per_s=PLENTY, burst=PLENTY, max_concurrent=1)
    try:
        await crashed.acquire("acme", limits)
        assert (await refusal(survivor, "acme", limits)).reason == "concurrency"

        await asyncio.sleep(0.15)

        await survivor.acquire("acme", limits)
    finally:
        await crashed.close()
        await survivor.close()


async def test_an_idle_tenant_leaves_no_keys_behind(redis_store):
    client, prefix = redis_store
    admission = RedisAdmission(REDIS_URL, key_prefix=prefix, slot_ttl_s=0.1)
    try:
        # The bucket refills in 0.1 s and the slot lives 0.1 s: both keys may go after that.
        ticket = await admission.acquire("acme", Limits(rate_per_s=10, burst=1, max_concurrent=1))
        keys = await keys_under(client, prefix)
        assert len(keys) == 2
        for key in keys:
            assert 0 < await client.pttl(key) <= 102, f"{key!r} must expire once the tenant is idle"

        await admission.release(ticket)
        await asyncio.sleep(0.2)

        assert await keys_under(client, prefix) == []
    finally:
        await admission.close()


async def test_an_unreachable_redis_makes_acquire_and_release_unavailable_quickly():
    admission = RedisAdmission(UNREACHABLE_REDIS_URL, connect_timeout_s=0.2)
    limits = Limits(rate_per_s=10, burst=10, max_concurrent=10)
    try:
        started = time.monotonic()
        with pytest.raises(AdmissionUnavailable) as caught:
            await admission.acquire("acme", limits)
        assert time.monotonic() - started < 1.0
        message = caught.value.message
        assert message.startswith("admission control cannot admit a request for tenant 'acme': Redis at ")
        assert "redis://127.0.0.1:1/0" in message
        assert message.endswith("requests are refused until it is back")
        assert "s3cret" not in message

        with pytest.raises(AdmissionUnavailable, match="cannot release a slot of tenant 'acme'"):
            await admission.release(await LocalAdmission().acquire("acme", limits))
    finally:
        await admission.close()


async def test_admission_for_shares_through_redis_only_when_a_url_is_given():
    assert isinstance(admission_for(None), LocalAdmission)
    assert isinstance(admission_for(""), LocalAdmission)
    shared = admission_for(UNREACHABLE_REDIS_URL)  # nothing connects until the first call
    assert isinstance(shared, RedisAdmission)
    await shared.close()
    # A crashed gateway's slots outlive its longest possible request, by a margin.
    assert admission_for(UNREACHABLE_REDIS_URL)._slot_ttl_us == 120 * 1_000_000  # type: ignore[attr-defined]
    long = admission_for(UNREACHABLE_REDIS_URL, longest_request_s=300)
    assert long._slot_ttl_us == 330 * 1_000_000  # type: ignore[attr-defined]
    await long.close()


# --- the no-I/O verdict of the in-process admission -------------------------------------


@pytest.mark.parametrize(
    "limits",
    [
        Limits(rate_per_s=2, burst=2, max_concurrent=PLENTY),
        Limits(rate_per_s=0.25, burst=1, max_concurrent=PLENTY),
        Limits(rate_per_s=PLENTY, burst=PLENTY, max_concurrent=2),
        Limits(rate_per_s=0, burst=1, max_concurrent=PLENTY),
        Limits(rate_per_s=1, burst=1, max_concurrent=0),
    ],
    ids=["rate", "slow-rate", "concurrency", "closed-rate", "closed-concurrency"],
)
async def test_refused_now_says_what_acquire_would_do_without_taking_anything(limits):
    """The gateway's fast path asks ``refused_now`` for every request of a tenant over its
    limit: it must agree with ``acquire`` (same refusal, same message and whole-second
    wait) and change nothing."""

    def said(verdict: AdmissionRefused | None) -> tuple[str, str, float] | None:
        return None if verdict is None else (verdict.reason, verdict.message, verdict.retry_after_s)

    admission = LocalAdmission()
    held, refusals = [], 0
    for _ in range(4):
        verdict = admission.refused_now("t", limits)
        assert said(admission.refused_now("t", limits)) == said(verdict)  # asking takes nothing
        try:
            held.append(await admission.acquire("t", limits))
        except AdmissionRefused as refused:
            refusals += 1
            assert verdict is not None, "refused_now said admit; acquire refused"
            assert (verdict.reason, verdict.message) == (refused.reason, refused.message)
            assert verdict.retry_after_s == max(1, math.ceil(refused.retry_after_s))
        else:
            assert verdict is None, f"refused_now refused ({verdict}); acquire admitted"
    assert refusals >= 2  # every case runs out within four requests
    if limits.max_concurrent == 2:  # a release makes room at once
        await admission.release(held[0])
        assert admission.refused_now("t", limits) is None
