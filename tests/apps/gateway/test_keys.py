"""``KeyCache``: keys the process has no verdict for are looked up in the database, a bounded
number at once, so made-up keys cannot queue reads ahead of everything else."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from apps.gateway.app import MAX_KEY_LOOKUPS, GatewayError, KeyCache
from apps.tenants.keys import key_digest


class _HeldDatabase:
    """Stands in for the database threads: every key lookup waits until ``release``, then
    finds no key (an unknown one)."""

    def __init__(self) -> None:
        self.reads = 0
        self.release = asyncio.Event()

    async def run(self, function: Any, /, **kwargs: Any) -> None:
        self.reads += 1
        await self.release.wait()
        return None


def _made_up(n: int) -> bytes:
    return f"Bearer brt_{n:08x}_{'z' * 30}".encode()


def _digest(header: bytes) -> str:
    return key_digest(header.decode().removeprefix("Bearer "))


async def test_made_up_keys_queue_a_bounded_number_of_lookups_and_the_rest_are_told_to_retry():
    database = _HeldDatabase()
    keys = KeyCache(database, ttl_s=1.5)  # type: ignore[arg-type]
    waiting = [asyncio.ensure_future(keys.principal(_made_up(n))) for n in range(MAX_KEY_LOOKUPS)]
    # The same key again shares its pending lookup rather than taking another.
    waiting.append(asyncio.ensure_future(keys.principal(_made_up(0))))
    await asyncio.sleep(0.05)
    assert database.reads == MAX_KEY_LOOKUPS
    with pytest.raises(GatewayError) as busy:  # at once, not after the others' reads
        await asyncio.wait_for(keys.principal(_made_up(MAX_KEY_LOOKUPS)), 1)
    assert busy.value.status == 503 and busy.value.retry_after_s == 1
    assert "retry shortly" in busy.value.message
    assert database.reads == MAX_KEY_LOOKUPS  # the refused one read nothing
    # A key found before, whose verdict expired, waits for its re-check instead.
    known = _made_up(10_000)
    keys._entries[_digest(known)] = (time.monotonic() - 1, object())  # type: ignore[assignment]
    rechecked = asyncio.ensure_future(keys.principal(known))
    await asyncio.sleep(0.05)
    assert not rechecked.done() and database.reads == MAX_KEY_LOOKUPS + 1
    waiting.append(rechecked)
    database.release.set()
    for outcome in await asyncio.gather(*waiting, return_exceptions=True):
        assert isinstance(outcome, GatewayError) and outcome.status == 401  # unknown, as the database said
    # With the lookups done, a new key is looked up again; an unknown one's verdict is kept.
    with pytest.raises(GatewayError) as unknown:
        await keys.principal(_made_up(MAX_KEY_LOOKUPS))
    assert unknown.value.status == 401
    with pytest.raises(GatewayError):
        await keys.principal(_made_up(1))
    assert database.reads == MAX_KEY_LOOKUPS + 2
    # A key found unknown before gets no such pass once its verdict expires: made-up keys
    # cannot come back as known ones.
    database.release = asyncio.Event()
    held = [asyncio.ensure_future(keys.principal(_made_up(n))) for n in range(20_000, 20_000 + MAX_KEY_LOOKUPS)]
    await asyncio.sleep(0.05)
    keys._entries[_digest(_made_up(1))] = (time.monotonic() - 1, None)
    with pytest.raises(GatewayError) as again:
        await asyncio.wait_for(keys.principal(_made_up(1)), 1)
    assert again.value.status == 503
    database.release.set()
    await asyncio.gather(*held, return_exceptions=True)
