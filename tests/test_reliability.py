"""Bad inputs end in one clear line; interrupted commands rerun to completion; one writer."""

import os

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tf_fm
from tf_fm import cli, training
from tf_fm.errors import UsageError, readable_message
from tf_fm.export import publish


def _libsvm(path, n=200, bad_line=None, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        ids = sorted(rng.choice(30, size=rng.integers(1, 4), replace=False))
        lines.append(f"{int(rng.random() < 0.4)} " + " ".join(f"{i}:1" for i in ids))
    if bad_line is not None:
        lines[bad_line[0] - 1] = bad_line[1]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _train(data, out, *extra, valid=None):
    args = ["train", "--data", data, "--format", "libsvm", "--model", "fm", "--epochs", "2"]
    args += ["--output", str(out), *(["--valid", valid] if valid else []), *extra]
    return cli.main(args)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("1 3:1 6:abc", "entry 2 `6:abc` is not idx:val"),
        ("1 -4:1", "is not idx:val"),
        ("abc 3:1", "label"),
        ("1 3", "is not idx:val"),
        ("3 3:1", "label `3` is not 0 or 1"),
        ("1 " + "9" * 20 + ":1", "indices of up to 15 digits"),
    ],
)
def test_libsvm_malformed_line_is_one_line_with_file_and_line(tmp_path, capsys, line, reason):
    data = _libsvm(tmp_path / "train.txt", bad_line=(7, line))
    assert _train(data, tmp_path / "run") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "train.txt:7: " in err and reason in err, err
    assert "Graph execution error" not in err and "function_node" not in err


@pytest.mark.parametrize("line", ["1 3:1", "1 -1:3:1", "1 0:3:x"])
def test_libffm_malformed_line_is_one_line_with_file_and_line(tmp_path, capsys, line):
    lines = [f"{i % 2} 0:{i % 7}:1 1:{7 + i % 5}:0.5" for i in range(60)]
    lines[6] = line
    (tmp_path / "train.ffm").write_text("\n".join(lines) + "\n")
    args = ["train", "--data", str(tmp_path / "train.ffm"), "--format", "libffm"]
    assert (
        cli.main([*args, "--model", "ffm", "--epochs", "1", "--output", str(tmp_path / "r")]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.ffm:7: " in err and "is not field:idx:val" in err, err


def test_malformed_validation_line_stops_before_training(tmp_path, capsys):
    data = _libsvm(tmp_path / "train.txt")
    valid = _libsvm(tmp_path / "valid.txt", bad_line=(3, "1 2:x"), seed=1)
    assert _train(data, tmp_path / "run", valid=valid) == 1
    captured = capsys.readouterr()
    assert "valid.txt:3: " in captured.err
    assert "Training fm" not in captured.out  # no epoch ran first
    assert not (tmp_path / "run" / "history.json").exists()


def test_epochs_zero_is_a_usage_error(tmp_path, capsys):
    data = _libsvm(tmp_path / "train.txt")
    assert _train(data, tmp_path / "run", "--epochs", "0") == 2
    assert "epochs must be a positive integer" in capsys.readouterr().err


def test_invalid_schema_files_are_named(tmp_path, capsys):
    frame_path = tmp_path / "train.csv"
    frame_path.write_text("label,a\n1,x\n0,y\n")
    bad = tmp_path / "schema.json"
    bad.write_text('{"format": "tf_fm.FeatureSchema", "features": [')
    args = ["train", "--data", str(frame_path), "--format", "csv", "--schema", str(bad)]
    assert cli.main([*args, "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{bad} is not a valid schema file" in err and err.count("\n") == 1


def test_ragged_csv_at_inference_names_the_file(tmp_path, capsys):
    path = tmp_path / "train.csv"
    path.write_text("label,a,b\n1,x,2\n0,y,3,4\n")
    args = ["train", "--data", str(path), "--format", "csv", "--output", str(tmp_path / "r")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Expected 3 fields" in err


def test_corrupted_run_schema_before_predict_is_named(tmp_path, capsys):
    data = _libsvm(tmp_path / "train.txt")
    out = tmp_path / "run"
    assert _train(data, out) == 0
    (out / "schema.json").write_text("{ not json")
    target = str(tmp_path / "p.csv")
    assert cli.main(["predict", str(out), "--data", data, "--output", target]) == 2
    assert f"{out / 'schema.json'} is not a valid schema file" in capsys.readouterr().err


def test_rerun_of_a_finished_run_goes_on_with_the_export(tmp_path, capsys):
    """`kill -9` during the export step, then the identical command: it exports, once."""
    data = _libsvm(tmp_path / "train.txt")
    out, export_dir = tmp_path / "run", tmp_path / "serving"
    assert _train(data, out) == 0  # trained; as if killed before the export
    model_bytes = (out / "model.keras").read_bytes()
    assert _train(data, out, "--export", str(export_dir)) == 0
    assert "already holds this run" in capsys.readouterr().out
    assert (out / "model.keras").read_bytes() == model_bytes  # not retrained
    assert _train(data, out, "--export", str(export_dir)) == 0
    assert "already holds this run's model" in capsys.readouterr().out
    assert tf_fm.export.list_versions(export_dir) == [1]
    # Other settings on the same directory still need --overwrite.
    assert _train(data, out, "--embedding-dim", "4") == 2


def test_stale_staging_of_dead_exports_is_removed(tmp_path):
    dead = tmp_path / ".tmp-1-999999999-abc"  # no such pid
    alive = tmp_path / f".tmp-2-{os.getpid()}-xyz"
    other = tmp_path / "1"
    for path in (dead, alive, other):
        path.mkdir()
    assert publish.remove_stale_staging(tmp_path) == [dead]
    assert alive.is_dir() and other.is_dir() and not dead.exists()


def test_one_writer_per_run_directory(tmp_path):
    with training.RunLock(tmp_path / "run"):
        with pytest.raises(UsageError, match=rf"in use by another training \(pid {os.getpid()}\)"):
            training.train(_libsvm(tmp_path / "t.txt"), format="libsvm", output=tmp_path / "run")
    with training.RunLock(tmp_path / "run"):  # released on exit
        pass


def test_readable_message_strips_tensorflow_wrapping():
    wrapped = tf.errors.InvalidArgumentError(
        None,
        None,
        "Graph execution error:\n\nDetected at node Assert defined at (most recent call last):\n"
        '  File "x.py", line 1\n{{function_node __wrapped__IteratorGetNext}} assertion failed: '
        "[Malformed input at a.txt:3: label `x` is not a number]\n\t [[{{node Assert}}]] "
        "[Op:IteratorGetNext] name: ",
    )
    assert readable_message(wrapped) == "Malformed input at a.txt:3: label `x` is not a number"
    other = tf.errors.InvalidArgumentError(
        None, None, "{{function_node f}} indices[0] = 9 is not in [0, 5) [Op:GatherV2] name: "
    )
    assert readable_message(other) == "indices[0] = 9 is not in [0, 5)"
    assert readable_message(ValueError("first\nsecond")) == "first"


def _first_error(dataset):
    with pytest.raises(Exception) as info:
        for _ in dataset:
            pass
    return readable_message(info.value)


def test_an_error_raised_while_tracing_reads_as_its_own_message():
    frame = pd.DataFrame({"label": [1.0, 0.0], "c": [3.0, 0.7]})
    dataset = tf_fm.data.read_dataframe(frame, label="label")
    feature = tf_fm.CategoricalFeature("c", encoding="integer", num_ids=5)
    schema = tf_fm.FeatureSchema([feature], label="label")
    with pytest.raises(TypeError) as caught:
        schema.adapt(dataset)
    assert str(caught.value).startswith("in user code:")  # autograph's wrapping
    message = readable_message(caught.value)
    assert message == "Feature 'c' is declared dtype='int64' but its input has dtype float32."


def test_libsvm_nan_and_inf_values_are_malformed_lines(tmp_path):
    path = _libsvm(tmp_path / "t.txt", bad_line=(5, "1 1:nan 6:inf"))
    message = _first_error(tf_fm.data.read_libsvm(path, batch_size=64))
    assert "t.txt:5: entry 1 `1:nan` is not idx:val" in message
    report = tf_fm.data.ReadReport()
    rows = sum(
        int(y.shape[0])
        for _, y in tf_fm.data.read_libsvm(path, batch_size=64, on_error="skip", report=report)
    )
    assert (rows, report.skipped) == (199, 1)  # every line accounted for


def test_a_directory_is_named_as_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a directory"):
        tf_fm.data.read_criteo(str(tmp_path))


def test_truncated_tfrecord_shard_is_named(tmp_path):
    rows = {"a": np.arange(200, dtype=np.int64)}
    dataset = tf.data.Dataset.from_tensor_slices((rows, np.zeros(200, np.float32))).batch(50)
    (path,) = tf_fm.data.write_tfrecords(dataset, str(tmp_path / "shard"))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 7])
    spec = tf_fm.data.DataSpec("tfrecord")
    with pytest.raises(ValueError, match=rf"{path}: truncated record at byte \d+"):
        tf_fm.data.read_files(spec, [path])


def test_non_utf8_criteo_cell_trains(tmp_path):
    """Raw bytes in a categorical cell are a category like any other, in every path."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(300):
        cats = [f"{rng.integers(0, 9):08x}" for _ in range(26)]
        ints = [str(rng.integers(0, 9)) for _ in range(13)]
        lines.append("\t".join([str(i % 2), *ints, *cats]).encode())
    lines[3] = lines[3].replace(lines[3].split(b"\t")[14], b"\xff\xfe", 1)
    path = tmp_path / "train.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    args = ["train", "--data", str(path), "--format", "criteo", "--model", "fm", "--epochs", "1"]
    assert cli.main([*args, "--output", str(tmp_path / "run")]) == 0
    schema = tf_fm.FeatureSchema.load(tmp_path / "run" / "schema.json")
    assert schema.state["C1"]["num_undecodable"] == 1  # counted, and left to the OOV id


def _user_dataset(labels):
    """A dataset a user builds by hand: one ready-id field, the given labels."""
    ids = np.arange(len(labels), dtype=np.int64) % 5
    return tf.data.Dataset.from_tensor_slices(({"c": ids}, np.asarray(labels))).batch(4)


@pytest.mark.parametrize(
    "task, labels, message",
    [
        ("binary", [0, 1, 5, 0], "label 5 is not 0 or 1 (task=binary)"),
        ("binary", [0, np.nan, 1, 0], "label nan is not 0 or 1 (task=binary)"),
        ("regression", [1.5, 2.0, np.inf, 3.0], "label inf is not a finite number"),
    ],
)
def test_a_users_dataset_with_bad_labels_stops_before_any_weight_changes(task, labels, message):
    feature = tf_fm.CategoricalFeature("c", encoding="integer", num_ids=5)
    model = tf_fm.compile_model(tf_fm.FM([feature], embedding_dim=2, task=task))
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        model.fit(_user_dataset(labels), epochs=1, verbose=0)
    assert readable_message(caught.value).startswith(message)
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())


def test_checked_losses_equal_keras_losses_and_reload():
    labels = np.array([[0.0], [1.0], [1.0]], np.float32)
    probabilities = np.array([[0.2], [0.7], [0.9]], np.float32)
    checked = tf_fm.losses.CheckedBinaryCrossentropy()
    plain = keras.losses.BinaryCrossentropy()
    np.testing.assert_allclose(checked(labels, probabilities), plain(labels, probabilities))
    squared = tf_fm.losses.CheckedMeanSquaredError()
    np.testing.assert_allclose(
        squared(labels, probabilities), keras.losses.MeanSquaredError()(labels, probabilities)
    )
    again = keras.losses.deserialize(keras.losses.serialize(checked))
    assert isinstance(again, tf_fm.losses.CheckedBinaryCrossentropy)


def test_checked_losses_take_an_empty_batch():
    # A worker's share of the last global batch can be empty (tf_fm.distributed).
    empty = np.zeros((0, 1), np.float32)
    for loss in (tf_fm.losses.CheckedBinaryCrossentropy(), tf_fm.losses.CheckedMeanSquaredError()):
        assert loss.call(tf.constant(empty), tf.constant(empty)).shape == (0,)
        assert tf.function(loss.call)(tf.constant(empty), tf.constant(empty)).shape == (0,)


@pytest.mark.parametrize(
    ("rows", "error", "match"),
    [
        ({"price": ["cheap"], "item": [1], "tags": [[1, 2, 0]]}, TypeError, "'price' is float32"),
        ({"price": [1.0], "item": [0.7], "tags": [[1, 2, 0]]}, TypeError, "'item' is int64"),
        ({"price": [1.0], "item": [None], "tags": [[1, 2, 0]]}, ValueError, "'item' is int64"),
        ({"price": [1.0], "item": [1], "tags": [[1, 2]]}, ValueError, "'tags' needs shape"),
        ({"price": [[1.0, 2.0]], "item": [1], "tags": [[1, 2, 0]]}, ValueError, "'price' needs"),
        ({"item": [1], "tags": [[1, 2, 0]]}, KeyError, r"Missing feature\(s\) \['price'\]"),
    ],
)
def test_client_helpers_name_the_feature_of_a_bad_value(rows, error, match):
    # Called directly, a signature says `input #34 was expected to be a float tensor`;
    # the request helpers check each value against its feature first.
    from tf_fm.export import requests

    specs = {"price": "float32", "item": "int64", "tags": ("int64", (3,))}
    with pytest.raises(error, match=match):
        requests.to_rest_json(rows, schema=specs)


def test_a_damaged_tfrecord_record_names_the_shard_at_train(tmp_path, capsys):
    n = 400
    rows = {"a": np.arange(n, dtype=np.int64) % 13, "b": np.arange(n, dtype=np.int64) % 7}
    dataset = tf.data.Dataset.from_tensor_slices((rows, (np.arange(n) % 2).astype("float32")))
    (path,) = tf_fm.data.write_tfrecords(dataset.batch(64), str(tmp_path / "train"))
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0x40  # the last record's data checksum no longer matches its data
    open(path, "wb").write(bytes(data))
    args = ["train", "--data", path, "--format", "tfrecord", "--model", "fm", "--epochs", "1"]
    assert cli.main([*args, "--output", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{path}: corrupted record at byte " in err, err


def test_a_shard_cut_at_a_record_boundary_is_named(tmp_path):
    """A cut between two records leaves valid framing: the spec's row count finds it."""
    rows = {"a": np.arange(10, dtype=np.int64)}
    dataset = tf.data.Dataset.from_tensor_slices((rows, np.zeros(10, np.float32))).batch(5)
    (path,) = tf_fm.data.write_tfrecords(dataset, str(tmp_path / "shard"))
    data = open(path, "rb").read()
    first = 16 + int.from_bytes(data[:8], "little")  # header 12 + data + crc 4
    open(path, "wb").write(data[:first])  # one whole record of ten
    with pytest.raises(ValueError, match=r"1 records where its spec says 10"):
        tf_fm.data.read_files(tf_fm.data.DataSpec("tfrecord"), [path])
