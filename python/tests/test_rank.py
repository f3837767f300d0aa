"""Client.rank and AsyncClient.rank (RankDataset) against the real server: scores equal to
PredictUncertainty's for the same rows, seed and T, best first, and the errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import dropnet


def test_rank_scores_are_uncertainty_scores(client, digits):
    x, _ = digits
    seen = []
    version = client.get_model("digits").version
    r = client.rank("digits", "digits", by="bald", top=8, samples=30, seed=3, batch_size=100,
                    version=version, progress=lambda done, total: seen.append((done, total)))
    assert isinstance(r, dropnet.Ranking)
    assert (r.criterion, r.rows, r.samples, r.seed, r.batch_size) == (
        "mutual_information", len(x), 30, 3, 100)
    assert r.version == version and len(r) == 8
    assert seen and seen[-1] == (len(x), len(x))
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:]))
    # Each row's score is PredictUncertainty's for it within its batch of 100 rows.
    for row, score, k in zip(r.indices, r.scores, r.predicted_class):
        start = row // 100 * 100
        u = client.uncertainty("digits", x[start:start + 100], samples=30, seed=3,
                               version=version)
        assert score == u.mutual_information[row - start]
        assert k == u.predicted_class[row - start]
    assert np.all(np.diff(r.scores) <= 0)  # highest first
    # No row of the data set scores higher than the last one kept, in a full ranking.
    every = client.rank("digits", "digits", top=10_000, samples=30, seed=3, batch_size=100,
                        version=version)
    assert len(every) == len(x) and sorted(every.indices) == list(range(len(x)))
    np.testing.assert_array_equal(every.indices[:8], r.indices)


def test_rank_margin_smallest_first(client, digits):
    x, _ = digits
    r = client.rank("digits", "digits", by="margin", top=5, samples=20, seed=1)
    assert r.criterion == "margin"
    assert np.all(np.diff(r.scores) >= 0)  # smallest margin first
    row = int(r.indices[0])
    start = row // 256 * 256
    u = client.uncertainty("digits", x[start:start + 256], samples=20, seed=1, version=r.version)
    p = np.sort(u.mean[row - start])[::-1]
    assert r.scores[0] == np.float32(p[0] - p[1])


def test_rank_errors(client, digits):
    with pytest.raises(dropnet.InvalidArgument, match="top_k must be positive, got 0"):
        client.rank("digits", "digits", top=0)
    with pytest.raises(dropnet.InvalidArgument, match="by must be one of"):
        client.rank("digits", "digits", by="confusion", top=3)
    with pytest.raises(dropnet.NotFound, match="no-such-set"):
        client.rank("digits", "no-such-set", top=3)
    with pytest.raises(dropnet.DeadlineExceeded):
        client.rank("digits", "digits", top=3, samples=500, batch_size=1, timeout=0.2)


def test_async_rank_equals_blocking(server, client, digits):
    async def ranked():
        async with dropnet.AsyncClient(server.address, token="") as c:
            return await c.rank("digits", "digits", by="entropy", top=6, samples=10, seed=9)

    a = asyncio.run(ranked())
    b = client.rank("digits", "digits", by="entropy", top=6, samples=10, seed=9,
                    version=a.version)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores, b.scores)
