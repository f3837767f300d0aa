"""Every method of dropnet.Client against a real server."""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest

import dropnet
from conftest import SOURCE, run_cli

SMALL_SPEC = {
    "inputShape": [64],
    "seed": 3,
    "layers": [{"type": "dense", "units": 16}, {"type": "relu"},
               {"type": "dropout", "rate": 0.2}, {"type": "dense", "units": 10}],
}


def test_health(client):
    assert client.health() is True


def test_models_create_get_list_versions_delete(client):
    info = client.create_model("small", SMALL_SPEC)
    assert (info.name, info.version, info.versions, info.task) == ("small", 1, (1,), "classification")
    assert info.input_shape == (64,) and info.output_size == 10
    assert info.parameter_count == 64 * 16 + 16 + 16 * 10 + 10
    assert info.spec["layers"][0]["units"] == 16
    assert client.get_model("small").parameter_count == info.parameter_count
    assert "small" in [m.name for m in client.list_models()]
    assert client.versions("small") == [1]
    client.delete_model("small")
    with pytest.raises(dropnet.NotFound) as e:
        client.get_model("small")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert "small" in e.value.message


def test_create_model_errors(client, digits):
    with pytest.raises(dropnet.AlreadyExists):
        client.create_model("digits", SMALL_SPEC)
    with pytest.raises(dropnet.InvalidArgument) as e:
        client.create_model("bad", {"inputShape": [64], "layers": [{"type": "dense"}]})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "units" in str(e.value)
    with pytest.raises(dropnet.InvalidArgument):
        client.create_model("bad", {"inputShape": [64], "layerz": []})  # unknown field
    with pytest.raises(ValueError):  # InvalidArgument is a ValueError too
        client.create_model("bad name!", SMALL_SPEC)


def test_upload_forms_and_listing(client):
    x = np.random.default_rng(0).random((40, 64))  # float64
    y = np.arange(40) % 10
    info = client.upload("rows", x, y)
    assert (info.rows, info.input_shape, info.num_classes, info.source) == (40, (64,), 10, "upload")
    info = client.upload("lists", x.tolist(), y.tolist(), rows_per_chunk=7)
    assert info.rows == 40
    info = client.upload("images", x.reshape(40, 1, 8, 8), y)
    assert info.input_shape == (1, 8, 8)
    names = np.array(["cat", "dog"])[np.arange(40) % 2]
    info = client.upload("named", x[:, :4], names)
    assert info.class_names == ("cat", "dog") and info.num_classes == 2
    with pytest.raises(dropnet.AlreadyExists):
        client.upload("rows", x, y)
    assert client.upload("rows", x[:10], y[:10], overwrite=True).rows == 10
    listed = {d.name: d for d in client.list_datasets()}
    assert {"rows", "lists", "images", "named"} <= set(listed)
    for name in ("rows", "lists", "images", "named"):
        client.delete_dataset(name)
    with pytest.raises(dropnet.NotFound):
        client.delete_dataset("rows")
    with pytest.raises(dropnet.InvalidArgument):
        client.upload("bad", x, y[:3])


def test_upload_dataframe(client):
    pd = pytest.importorskip("pandas")
    x, _ = np.random.default_rng(1).random((30, 3)), None
    df = pd.DataFrame(x, columns=["a", "b", "c"])
    df["label"] = ["yes", "no", "maybe"] * 10
    info = client.upload("frame", df, target="label")
    assert info.feature_names == ("a", "b", "c")
    assert info.class_names == ("maybe", "no", "yes")
    info = client.upload("frame2", df[["a", "b", "c"]], df["label"])
    assert info.rows == 30 and info.input_shape == (3,)
    client.delete_dataset("frame")
    client.delete_dataset("frame2")


def test_import_dataset(client):
    info = client.import_dataset("imported", "digits.csv", limit=100)
    assert info.rows == 100 and info.source == "digits.csv"
    with pytest.raises(dropnet.NotFound):
        client.import_dataset("missing", "nope.csv")
    client.delete_dataset("imported")


def test_split_dataset(client, server):
    client.import_dataset("to-split", "digits.csv")
    split = client.split_dataset("to-split", [0.8, 0.2], seed=3)
    assert isinstance(split, dropnet.DatasetSplit)
    assert split.names == ("to-split-train", "to-split-test")
    assert len(split) == 2 and [d.name for d in split] == list(split.names)
    assert sum(split.rows) == 1797 and abs(split.rows[1] - 0.2 * 1797) <= 10
    assert split["to-split-test"] is split[1]
    assert all(d.task == "classification" and d.num_classes == 10 for d in split)
    assert "to-split-test (" in repr(split)
    listed = {d.name: d.rows for d in client.list_datasets()}
    assert (listed["to-split-train"], listed["to-split-test"]) == split.rows
    with pytest.raises(KeyError, match="to-split-train"):
        split["nope"]
    # The command line's `data split` asks the same of the server.
    cli = run_cli(server, "data", "split", "to-split", "--fractions", "0.8,0.2", "--seed", "3",
                  "--names", "cli-a,cli-b", "-o", "json")
    assert cli.returncode == 0, cli.stderr
    assert tuple(d["rows"] for d in json.loads(cli.stdout)) == split.rows
    three = client.split_dataset("to-split", (0.5, 0.25, 0.25), seed=1, names=["a", "b", "c"])
    assert three.names == ("a", "b", "c") and sum(three.rows) == 1797
    with pytest.raises(dropnet.AlreadyExists):
        client.split_dataset("to-split", [0.8, 0.2], seed=3)
    again = client.split_dataset("to-split", [0.8, 0.2], seed=3, overwrite=True)
    assert again.rows == split.rows
    with pytest.raises(dropnet.InvalidArgument, match="fractions .* got '0.7,0.2'"):
        client.split_dataset("to-split", [0.7, 0.2])
    with pytest.raises(dropnet.NotFound):
        client.split_dataset("no-such-data", [0.5, 0.5])
    for name in ("to-split", *split.names, "cli-a", "cli-b", *three.names):
        client.delete_dataset(name)


def test_train_events(client, digits):
    client.create_model("trainee", SMALL_SPEC)
    run = client.train("trainee", "digits", epochs=2, batch_size=64, report_every_steps=5,
                       validation_split=0.2, standardize=True, seed=2)
    events = list(run)
    assert isinstance(events[0], dropnet.TrainStarted) and events[0].epochs == 2
    assert isinstance(events[-1], dropnet.TrainFinished)
    epochs = [e for e in events if isinstance(e, dropnet.TrainEpoch)]
    assert [e.epoch for e in epochs] == [1, 2] and [e.version for e in epochs] == [2, 3]
    assert any(isinstance(e, dropnet.TrainStep) for e in events)
    assert not np.isnan(epochs[-1].val_loss) and 0 <= epochs[-1].metric <= 1
    assert events[-1].version == 3 and run.finished is events[-1]
    assert "TrainEpoch(epoch=1" in repr(epochs[0])
    info = client.get_model("trainee")
    assert info.versions == (1, 2, 3) and len(info.history) == 2
    assert info.history[-1].dataset == "digits"
    # progress=True draws a bar (tqdm) or prints epoch lines while the run is read.
    final = client.train("trainee", "digits", epochs=1, progress=True).wait()
    assert final.version == 4
    with pytest.raises(dropnet.NotFound):
        client.train("trainee", "no-such-data").wait()
    with pytest.raises(dropnet.InvalidArgument):
        client.train("trainee", "digits", optimizer="adagrad")
    client.delete_model("trainee")


def test_train_cancel_keeps_last_version(client, digits):
    client.create_model("cancelled", SMALL_SPEC)
    run = client.train("cancelled", "digits", epochs=500, batch_size=16)
    for event in run:
        if isinstance(event, dropnet.TrainEpoch):
            break
    run.cancel()
    with pytest.raises(dropnet.Cancelled):
        for _ in run:
            pass
    for _ in range(200):  # the server stops between steps
        info = client.get_model("cancelled")
        if not info.training:
            break
        time.sleep(0.05)
    assert info.version >= 2 and not info.training
    client.delete_model("cancelled")


def test_predict_shapes(client, digits):
    x, y = digits
    p = client.predict("digits", x[:20])  # float64 [N, 64]
    assert p.outputs.shape == (20, 10) and p.outputs.dtype == np.float32
    np.testing.assert_allclose(p.outputs.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(p.predicted_class, p.outputs.argmax(axis=1))
    assert (p.predicted_class == y[:20]).mean() > 0.5
    assert p.version == 4 and p.task == "classification"
    for same in (x[:20].tolist(), x[:20].reshape(20, 8, 8), x[:20].reshape(20, 1, 8, 8)):
        np.testing.assert_array_equal(client.predict("digits", same).outputs, p.outputs)
    one = client.predict("digits", x[0])  # a single row
    assert one.outputs.shape == (1, 10)
    np.testing.assert_array_equal(one.outputs[0], p.outputs[0])
    assert "Prediction(model='digits'" in repr(p)


def test_predict_errors(client, digits):
    x, _ = digits
    with pytest.raises(dropnet.InvalidArgument) as e:
        client.predict("digits", x[:5, :63])
    assert "[64]" in e.value.message
    with pytest.raises(dropnet.NotFound):
        client.predict("no-such-model", x[:5])
    bad = x[:2].copy()
    bad[1, 3] = np.nan
    with pytest.raises(dropnet.InvalidArgument) as e:
        client.predict("digits", bad)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_uncertainty_result(client, digits):
    x, _ = digits
    u = client.uncertainty("digits", x[:8], samples=40, seed=7, return_samples=True)
    assert (u.num_samples, u.seed, u.version, u.task) == (40, 7, 4, "classification")
    assert u.mean.shape == u.std.shape == (8, 10)
    for a in (u.entropy, u.expected_entropy, u.mutual_information, u.variation_ratio,
              u.predicted_class, u.probability):
        assert a.shape == (8,)
    np.testing.assert_allclose(u.mutual_information, u.entropy - u.expected_entropy, atol=1e-5)
    assert ((u.variation_ratio >= 0) & (u.variation_ratio <= 1)).all()
    assert u.samples.shape == (40, 8, 10)
    np.testing.assert_allclose(u.samples.mean(axis=0), u.mean, atol=1e-5)
    assert u.interval is None and u.class_names is None
    assert u.predicted_label == u.predicted_class.tolist()
    text = repr(u)
    assert text.startswith("Uncertainty(model='digits', version=4") and "mutual_information" in text
    df = u.to_pandas()
    assert list(df.columns) == ["prediction", "probability", "std", "entropy",
                                "mutual_information", "variation_ratio"]
    assert len(df) == 8
    chosen = client.uncertainty("digits", x[:2])
    assert chosen.num_samples == 50 and chosen.samples is None


def test_uncertainty_reproducible_by_seed(client, digits):
    x, _ = digits
    a = client.uncertainty("digits", x[:16], samples=30, seed=11)
    b = client.uncertainty("digits", x[:16].tolist(), samples=30, seed=11)
    c = client.uncertainty("digits", x[:16], samples=30, seed=12)
    for field in ("mean", "std", "entropy", "mutual_information", "variation_ratio"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.mean, c.mean)
    replay = client.uncertainty("digits", x[:16], samples=30, seed=client.uncertainty(
        "digits", x[:16], samples=30).seed)
    assert replay.mean.shape == (16, 10)


def test_uncertainty_agrees_with_cli(client, server, digits, tmp_path):
    x, _ = digits
    path = tmp_path / "five.csv"
    np.savetxt(path, x[:5], delimiter=",", fmt="%g",
               header=",".join(f"f{i}" for i in range(64)), comments="")
    cli = run_cli(server, "uncertainty", "digits", "--input", str(path), "--samples", "100",
                  "--seed", "1", "--format", "json")
    assert cli.returncode == 0, cli.stderr
    rows = json.loads(cli.stdout)
    u = client.uncertainty("digits", x[:5], samples=100, seed=1)
    assert len(rows) == 5
    # The command line prints the server's float32 numbers exactly: they agree bit for bit.
    for i, r in enumerate(rows):
        assert r["prediction"] == u.predicted_class[i]
        np.testing.assert_array_equal(np.float32(r["probabilities"]), u.mean[i])
        k = u.predicted_class[i]
        np.testing.assert_array_equal(
            np.float32([r["probability"], r["std"], r["entropy"], r["expected_entropy"],
                        r["mutual_information"], r["variation_ratio"]]),
            np.float32([u.probability[i], u.std[i, k], u.entropy[i], u.expected_entropy[i],
                        u.mutual_information[i], u.variation_ratio[i]]))


def test_class_names_from_string_labels(client, digits):
    x, y = digits
    words = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    client.upload("worded", x, words[y])
    client.create_model("worded", SOURCE / "examples" / "digits_mlp.json")
    client.train("worded", "worded", epochs=1, standardize=True).wait()
    u = client.uncertainty("worded", x[:3], samples=10, seed=1)
    assert u.class_names == tuple(sorted(words))
    assert u.predicted_label == [u.class_names[k] for k in u.predicted_class]
    assert client.predict("worded", x[:3]).class_names == u.class_names
    client.delete_model("worded")
    client.delete_dataset("worded")


def test_evaluate(client, digits):
    e = client.evaluate("digits", "digits")
    assert (e.mode, e.rows, e.version, e.task) == ("eval", 1797, 4, "classification")
    assert 0.7 < e.accuracy <= 1 and e.nll > 0 and 0 <= e.ece <= 1
    x, y = digits
    assert (client.predict("digits", x).predicted_class == y).mean() == pytest.approx(e.accuracy)
    mc = client.evaluate("digits", "digits", samples=10, seed=3, limit=200)
    assert (mc.mode, mc.rows, mc.samples, mc.seed) == ("monte_carlo", 200, 10, 3)
    assert client.evaluate("digits", "digits", samples=10, seed=3, limit=200).nll == mc.nll
    with pytest.raises(dropnet.NotFound):
        client.evaluate("digits", "no-such-data")


def test_regression(client):
    client.upload("diabetes", SOURCE / "data" / "diabetes.csv", task="regression")
    client.create_model("diabetes", SOURCE / "examples" / "diabetes_regression.json")
    client.train("diabetes", "diabetes", epochs=2, standardize=True, seed=1).wait()
    u = client.uncertainty("diabetes", np.loadtxt(SOURCE / "data" / "diabetes.csv",
                                                  delimiter=",", skiprows=1)[:4, :-1],
                           samples=20, seed=1, interval=0.9)
    assert u.task == "regression" and u.predicted_class is None and u.entropy is None
    lower, upper = u.interval
    assert lower.shape == upper.shape == u.mean.shape == u.total_variance.shape
    assert (lower <= u.mean).all() and (u.mean <= upper).all()
    assert list(u.to_pandas().columns[:2]) == ["mean", "std"]
    assert "lower" in repr(u)
    e = client.evaluate("diabetes", "diabetes")
    assert e.task == "regression" and e.rmse > 0
    client.delete_model("diabetes")
    client.delete_dataset("diabetes")


def test_unreachable_server_is_unavailable():
    with dropnet.Client("127.0.0.1:1", timeout=5, max_attempts=2) as c:
        with pytest.raises(dropnet.Unavailable):
            c.list_models()
