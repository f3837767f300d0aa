"""dropnet.AsyncClient against the same server as the blocking client."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import dropnet
from test_client import SMALL_SPEC


def test_async_client(server, client, digits):
    x, _ = digits

    async def calls():
        async with dropnet.AsyncClient(server.address, token="") as c:
            assert await c.health()
            assert "digits" in [m.name for m in await c.list_models()]
            assert await c.versions("digits") == client.versions("digits")
            u = await c.uncertainty("digits", x[:6], samples=25, seed=5)
            p = await c.predict("digits", x[:6].tolist())
            info = await c.create_model("async-model", SMALL_SPEC)
            assert info.version == 1
            await c.upload("async-data", x[:100], np.arange(100) % 10)
            run = await c.train("async-model", "async-data", epochs=2, report_every_steps=1)
            kinds = [type(e).__name__ async for e in run]
            assert kinds[0] == "TrainStarted" and kinds[-1] == "TrainFinished"
            assert kinds.count("TrainEpoch") == 2
            final = await (await c.train("async-model", "async-data", epochs=1)).wait()
            assert final.version == 4
            e = await c.evaluate("async-model", "async-data", samples=5, seed=1)
            assert e.rows == 100 and e.mode == "monte_carlo"
            assert "async-data" in [d.name for d in await c.list_datasets()]
            parts = await c.split_dataset("async-data", [0.5, 0.5], seed=2)
            assert isinstance(parts, dropnet.DatasetSplit)
            assert parts.names == ("async-data-train", "async-data-test")
            assert parts.rows == (50, 50)
            with pytest.raises(dropnet.InvalidArgument):
                await c.split_dataset("async-data", [1.0])
            for part in parts:
                await c.delete_dataset(part.name)
            await c.delete_model("async-model")
            await c.delete_dataset("async-data")
            with pytest.raises(dropnet.NotFound):
                await c.get_model("async-model")
            with pytest.raises(dropnet.InvalidArgument):
                await c.predict("digits", x[:2, :10])
            return u, p

    u, p = asyncio.run(calls())
    same = client.uncertainty("digits", x[:6], samples=25, seed=5)
    np.testing.assert_array_equal(u.mean, same.mean)
    np.testing.assert_array_equal(u.mutual_information, same.mutual_information)
    np.testing.assert_array_equal(p.outputs, client.predict("digits", x[:6]).outputs)
