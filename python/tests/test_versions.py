"""Versions and labels through the Python client: a pinned version answers bit-identically after
more training, labels move and go, the serving label decides the default, and list_models pages."""

from __future__ import annotations

import numpy as np
import pytest

import dropnet

from conftest import SOURCE, load_digits


def test_pinned_version_and_labels(client):
    x, _ = load_digits()
    client.create_model("versioned", SOURCE / "examples" / "digits_mlp.json",
                        serving_label="stable", keep_versions=3)
    client.upload("versioned-data", SOURCE / "data" / "digits.csv")
    client.train("versioned", "versioned-data", epochs=2, seed=1).wait()
    info = client.get_model("versioned")
    assert (info.serving_label, info.labels, info.version, info.newest_version) == (
        "stable", {"stable": 1}, 1, 3)
    assert info.keep_versions == 3

    pinned = client.uncertainty("versioned", x[:4], samples=20, seed=7, version=3)
    assert pinned.version == 3
    assert client.predict("versioned", x[:4]).version == 1  # the serving label
    client.train("versioned", "versioned-data", epochs=1, seed=2).wait()  # version 4
    again = client.uncertainty("versioned", x[:4], samples=20, seed=7, version="3")
    np.testing.assert_array_equal(again.mean, pinned.mean)
    np.testing.assert_array_equal(again.std, pinned.std)

    info = client.set_label("versioned", "stable", 4)
    assert info.version == 4 and info.labels["stable"] == 4
    assert client.predict("versioned", x[:2]).version == 4
    client.set_label("versioned", "canary", 3)
    assert client.predict("versioned", x[:2], version="canary").version == 3
    assert client.evaluate("versioned", "versioned-data", limit=10, version=3).version == 3
    client.remove_label("versioned", "canary")
    with pytest.raises(dropnet.NotFound):
        client.predict("versioned", x[:2], version="canary")
    with pytest.raises(dropnet.FailedPrecondition):
        client.remove_label("versioned", "stable")
    with pytest.raises(dropnet.InvalidArgument):
        client.set_label("versioned", "9lives", 4)
    info = client.update_model("versioned", serving_label="")
    assert info.serving_label == "" and info.version == info.newest_version == 4


def test_list_models_pages(client):
    for i in range(3):
        client.create_model(f"paged{i}", {"inputShape": [4], "layers": [
            {"type": "dense", "units": 2}]})
    names = [m.name for m in client.list_models(page_size=1)]
    assert [n for n in names if n.startswith("paged")] == ["paged0", "paged1", "paged2"]
    assert names == sorted(names)
    for i in range(3):
        client.delete_model(f"paged{i}")
