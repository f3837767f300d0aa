"""Client.evaluate and AsyncClient.evaluate with a progress callback (EvaluateStream) against the
real server: the same answer as the unary call, bit for bit, progress after every batch, and a
deadline that stops the call."""

from __future__ import annotations

import asyncio

import pytest

import dropnet


def test_evaluate_with_progress_equals_unary(client, digits):
    x, _ = digits
    version = client.get_model("digits").version
    seen = []
    mc = client.evaluate("digits", "digits", samples=10, seed=4, version=version,
                         progress=lambda done, total: seen.append((done, total)))
    unary = client.evaluate("digits", "digits", samples=10, seed=4, version=version)
    assert mc.proto == unary.proto  # every field, bit for bit
    assert (mc.mode, mc.rows, mc.samples, mc.seed) == ("monte_carlo", len(x), 10, 4)
    # 1797 rows in Monte-Carlo batches of 256: 8 events, the last at the row count.
    assert [done for done, _ in seen] == [256 * i for i in range(1, 8)] + [len(x)]
    assert all(total == len(x) for _, total in seen)
    other = client.evaluate("digits", "digits", samples=10, seed=5, version=version)
    assert other.nll != mc.nll  # the comparison above can fail

    seen.clear()
    e = client.evaluate("digits", "digits", limit=500, version=version,
                        progress=lambda done, total: seen.append((done, total)))
    assert e.proto == client.evaluate("digits", "digits", limit=500, version=version).proto
    assert seen == [(500, 500)]  # eval mode: one batch


def test_evaluate_with_progress_errors(client, digits):
    with pytest.raises(dropnet.NotFound, match="no-such-set"):
        client.evaluate("digits", "no-such-set", progress=lambda done, total: None)
    with pytest.raises(dropnet.DeadlineExceeded):
        client.evaluate("digits", "digits", samples=500, timeout=0.05,
                        progress=lambda done, total: None)


def test_async_evaluate_with_progress(server, client, digits):
    seen = []

    async def evaluated():
        async with dropnet.AsyncClient(server.address, token="") as c:
            return await c.evaluate("digits", "digits", samples=5, seed=2, limit=600,
                                    progress=lambda done, total: seen.append(done))

    a = asyncio.run(evaluated())
    b = client.evaluate("digits", "digits", samples=5, seed=2, limit=600, version=a.version)
    assert a.proto == b.proto
    assert seen == [256, 512, 600]
