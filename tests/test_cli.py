"""The `tf-fm` command: train / evaluate / predict / export / verify / inspect, errors."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

import tf_fm
from tf_fm import cli, training
from tf_fm import metrics as metrics_lib


def _criteo_rows(n, seed):
    """Raw Criteo DAC lines (label, I1..I13, C1..C26) whose label depends on C1 and I1."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        c1 = rng.integers(0, 8)
        i1 = rng.poisson(3)
        p = 1 / (1 + np.exp(-(-1.5 + 0.5 * (c1 - 3.5) + 0.2 * (i1 - 3))))
        ints = [str(i1)] + [
            "" if rng.random() < 0.1 else str(rng.integers(0, 50)) for _ in range(12)
        ]
        cats = [f"{c1:08x}"] + [
            "" if rng.random() < 0.1 else f"{rng.integers(0, 30):08x}" for _ in range(25)
        ]
        lines.append("\t".join([str(int(rng.random() < p)), *ints, *cats]))
    return lines


@pytest.fixture(scope="module")
def criteo_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("criteo")
    files = {}
    for name, n, seed in (("train", 3000, 0), ("valid", 600, 1), ("test", 400, 2)):
        files[name] = root / f"{name}.txt"
        files[name].write_text("\n".join(_criteo_rows(n, seed)) + "\n")
    return files


def _train_args(files, out, *extra):
    """`tf-fm train` on the Criteo-format train/valid files: FM, 3 epochs unless `extra` says."""
    args = ["train", "--data", str(files["train"]), "--valid", str(files["valid"])]
    args += ["--format", "criteo", "--model", "fm", "--epochs", "3", "--output", str(out)]
    return args + list(extra)


@pytest.fixture(scope="module")
def trained_run(criteo_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fm"
    plots = out.parent / "plots"
    code = cli.main(
        _train_args(criteo_files, out, "--batch-size", "256", "--learning-rate", "0.01")
        + ["--plots", str(plots), "--metrics-out", str(out.parent / "metrics.json")]
    )
    assert code == 0
    return out


def test_train_writes_the_run(trained_run):
    for name in ("run.json", "schema.json", "model.keras", "history.json", "metrics.json"):
        assert (trained_run / name).is_file(), name
    assert not (trained_run / "backup").exists()  # removed once training finished
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics == json.loads((trained_run.parent / "metrics.json").read_text())
    assert metrics["valid"]["rows"] == 600
    assert metrics["valid"]["auc"] > 0.6  # C1 and I1 carry signal
    history = json.loads((trained_run / "history.json").read_text())
    assert len(history["loss"]) == metrics["epochs_run"] >= 1
    assert {"auc", "val_auc", "val_logloss"} <= set(history)
    schema = tf_fm.FeatureSchema.load(trained_run / "schema.json")
    assert schema.adapted and schema["I1"].transform == "log1p" and schema["C1"].min_count == 2
    for png in ("training_curves.png", "roc.png", "calibration.png"):
        data = (trained_run.parent / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_reloads_without_custom_objects(trained_run):
    model = keras.saving.load_model(trained_run / "model.keras")
    assert model.name == "fm"


def test_predict_one_row_per_input_in_order(trained_run, criteo_files, tmp_path):
    lines = criteo_files["test"].read_text().splitlines()
    reversed_file = tmp_path / "reversed.txt"
    reversed_file.write_text("\n".join(lines[::-1]) + "\n")
    unlabeled = tmp_path / "unlabeled.txt"  # the Kaggle test format: no label column
    unlabeled.write_text("\n".join(line.split("\t", 1)[1] for line in lines) + "\n")
    out = {}
    for name, path in (("test", criteo_files["test"]), ("rev", reversed_file), ("un", unlabeled)):
        target = tmp_path / f"{name}.csv"
        args = ["predict", str(trained_run), "--data", str(path), "--output", str(target)]
        assert cli.main(args) == 0
        out[name] = pd.read_csv(target)["probability"].to_numpy()
    assert len(out["test"]) == len(lines)
    np.testing.assert_allclose(out["rev"], out["test"][::-1], atol=1e-6)
    np.testing.assert_allclose(out["un"], out["test"], atol=1e-6)

    # The same numbers as the trained model on the preprocessed rows.
    schema = tf_fm.FeatureSchema.load(trained_run / "schema.json")
    model = keras.saving.load_model(trained_run / "model.keras")
    raw = tf_fm.data.read_criteo(str(criteo_files["test"]), batch_size=1000)
    want = np.concatenate(
        [model.predict_on_batch(x).reshape(-1) for x, _ in schema.preprocess(raw)]
    )
    np.testing.assert_allclose(out["test"], want, atol=1e-6)


def test_evaluate_matches_exact_metrics(trained_run, criteo_files, tmp_path):
    target = tmp_path / "eval.json"
    args = ["evaluate", str(trained_run), "--data", str(criteo_files["test"])]
    assert cli.main([*args, "--metrics-out", str(target)]) == 0
    got = json.loads(target.read_text())
    predictions = tmp_path / "p.csv"
    cli.main(
        [
            "predict",
            str(trained_run),
            "--data",
            str(criteo_files["test"]),
            "--output",
            str(predictions),
        ]
    )
    p = pd.read_csv(predictions)["probability"].to_numpy()
    labels = np.array(
        [float(line.split("\t")[0]) for line in criteo_files["test"].read_text().splitlines()]
    )
    assert got["rows"] == len(labels)
    assert got["auc"] == pytest.approx(metrics_lib.roc_auc(labels, p), abs=1e-6)
    assert got["logloss"] == pytest.approx(metrics_lib.log_loss(labels, p), abs=1e-6)


def test_export_verify_inspect(trained_run, tmp_path, capsys):
    export_dir = tmp_path / "serving" / "criteo_fm"
    assert cli.main(["export", str(trained_run), str(export_dir)]) == 0
    assert tf_fm.export.list_versions(export_dir) == [1]
    meta = tf_fm.export.read_metadata(export_dir / "1")
    assert meta["metrics"]["valid_auc"] == pytest.approx(
        json.loads((trained_run / "metrics.json").read_text())["valid"]["auc"]
    )
    capsys.readouterr()
    assert cli.main(["verify", str(export_dir)]) == 0  # rows from the warm-up records
    assert "OK: 10 rows" in capsys.readouterr().out
    assert cli.main(["inspect", str(export_dir)]) == 0
    text = capsys.readouterr().out
    assert "signature 'serving_default'" in text and "output probability" in text
    assert "input  C1 " in text and "FeatureSchema: 39 features" in text
    assert cli.main(["inspect", str(trained_run)]) == 0
    assert "model fm, format criteo" in capsys.readouterr().out


def test_resume_after_interruption(criteo_files, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = _train_args(criteo_files, out, "--epochs", "4", "--patience", "10")

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    original = training.training_callbacks
    monkeypatch.setattr(
        training, "training_callbacks", lambda *a, **k: [*original(*a, **k), Interrupt()]
    )
    assert cli.main(args) == 130
    assert (out / "backup").is_dir() and not (out / "model.keras").exists()
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 2

    monkeypatch.setattr(training, "training_callbacks", original)
    seen = []
    monkeypatch.setattr(
        training.EpochLog, "on_epoch_begin", lambda self, epoch, logs=None: seen.append(epoch)
    )
    assert cli.main(args) == 0
    assert seen == [2, 3]  # epochs 3 and 4 only: resumed after the second
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 4
    assert (out / "model.keras").is_file() and not (out / "backup").exists()
    # The identical command again finds the finished run; other settings need --overwrite.
    assert cli.main(args) == 0
    assert cli.main([*args, "--seed", "1"]) == 2


def _csv(tmp_path):
    rng = np.random.default_rng(0)
    n = 1500
    genre = rng.choice(["a", "b", "c", "d"], n)
    frame = pd.DataFrame(
        {
            "user": rng.integers(0, 40, n),
            "city": rng.choice(["x", "y", "z"], n),
            "price": np.where(rng.random(n) < 0.05, np.nan, rng.normal(10, 3, n)),
            "tags": [f"{g}|{rng.choice(['p', 'q'])}" for g in genre],
        }
    )
    frame["label"] = (rng.random(n) < np.where(genre == "a", 0.7, 0.2)).astype(int)
    frame.to_csv(tmp_path / "train.csv", index=False)
    return tmp_path / "train.csv"


def test_csv_schema_inference(tmp_path):
    path = _csv(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--data", str(path), "--format", "csv", "--separator", "|"]
    args += ["--model", "deepfm", "--dnn-units", "16,8", "--epochs", "2", "--output", str(out)]
    assert cli.main(args) == 0
    schema = tf_fm.FeatureSchema.load(out / "schema.json")
    kinds = {f.name: f.kind for f in schema.features}
    assert kinds == {
        "user": "categorical",  # an integer column with few values: ids
        "city": "categorical",
        "price": "numeric",
        "tags": "multivalued",
    }
    assert schema["price"].default == pytest.approx(
        pd.read_csv(path)["price"].mean(), rel=1e-6
    )  # missing prices take the sample mean
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["column_types"]["user"] == "string"
    target = tmp_path / "p.csv"
    assert cli.main(["predict", str(out), "--data", str(path), "--output", str(target)]) == 0
    assert len(pd.read_csv(target)) == 1500


def test_libsvm(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(800):
        ids = sorted(rng.choice(50, size=rng.integers(1, 6), replace=False))
        label = int(rng.random() < (0.8 if 7 in ids else 0.2))
        lines.append(f"{label} " + " ".join(f"{i}:1" for i in ids))
    path = tmp_path / "train.libsvm"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    args = ["train", "--data", str(path), "--valid", str(path), "--format", "libsvm"]
    assert cli.main([*args, "--model", "fm", "--epochs", "3", "--output", str(out)]) == 0
    # A libSVM run has a schema too: one weighted integer multi-valued feature.
    (feature,) = tf_fm.FeatureSchema.load(out / "schema.json").features
    assert feature.encoding == "integer" and feature.weighted
    assert feature.num_ids == max(int(t.split(":")[0]) for x in lines for t in x.split()[1:]) + 1
    target = tmp_path / "p.csv"
    assert cli.main(["predict", str(out), "--data", str(path), "--output", str(target)]) == 0
    assert len(pd.read_csv(target)) == 800


def test_errors_are_one_line_with_exit_codes(criteo_files, tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    assert cli.main(["train", "--data", str(missing), "--format", "criteo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tf-fm train: error: --data: no such file: {missing}"

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data", str(missing), "--format", "parquet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tf-fm train: error: argument --format: invalid choice: 'parquet'")
    assert err.count("\n") == 1  # one line, no usage block

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data", "x", "--format", "criteo", "--no-such-flag"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: unrecognized arguments: --no-such-flag" in err and err.count("\n") == 1

    bad = tmp_path / "bad.txt"
    lines = criteo_files["valid"].read_text().splitlines()
    lines[4] = "1\tnot-a-number" + lines[4][lines[4].index("\t", 2) :]
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    code = cli.main(
        ["train", "--data", str(bad), "--format", "criteo", "--model", "fm", "--output", str(out)]
    )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("tf-fm train: error: ")
    assert f"{bad}:5: column `I1` = `not-a-number` is not a number" in err

    assert cli.main(["inspect", str(tmp_path / "none")]) == 2
    assert cli.main(["verify", str(tmp_path)]) == 2
    assert "no SavedModel" in capsys.readouterr().err


def test_console_script_is_quiet():
    """`tf-fm` (the installed script): --help works, errors are one line without TF noise."""
    script = pathlib.Path(sys.executable).with_name("tf-fm")
    if not script.exists():
        pytest.skip("the tf-fm console script is not installed in this environment")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [str(script), "train", "--data", "/no/such/file", "--format", "criteo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "tf-fm train: error: --data: no such file: /no/such/file"
    assert done.stdout == ""
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "inspect" in done.stdout and done.stderr == ""


HELP_PROBE = """
import sys
from tf_fm import cli
for argv in (["--help"], ["train", "--help"], ["--version"], ["train", "--bogus"]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
print("tensorflow" in sys.modules, "keras" in sys.modules)
"""


def test_help_version_and_usage_errors_do_not_import_tensorflow():
    done = subprocess.run(
        [sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.slow
def test_train_deepfm_on_the_criteo_sample_and_export(shared_data, tmp_path, capsys):
    """The issue's acceptance run: the real Criteo sample, DeepFM, a verified export."""
    root = shared_data / "criteo_widresdnn_sample"
    export_dir = tmp_path / "criteo_deepfm"
    args = ["train", "--data", str(root / "train.csv"), "--valid", str(root / "dev.csv")]
    args += ["--format", "criteo", "--model", "deepfm", "--output", str(tmp_path / "run")]
    assert cli.main([*args, "--export", str(export_dir)]) == 0
    out = capsys.readouterr().out
    assert "Validation: auc 0." in out and f"published {export_dir}/1" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["valid"]["rows"] == 409 and metrics["valid"]["auc"] > 0.6
    assert tf_fm.export.read_metadata(export_dir / "1")["verification"]["rows"] == 409


@pytest.mark.slow
def test_demo_small(tmp_path, monkeypatch, capsys):
    """`tf-fm demo` end to end on a small draw (CI runs the full-size one)."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--rows", "5000", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "Bayes-optimal (true probabilities)" in out and "\nDeepFM " in out
    assert out.count("(at most 1 epochs,") == 2  # the same cap for both models
    assert (tmp_path / "saved_models" / "deepfm_demo" / "1" / "saved_model.pb").is_file()
    for name in ("fm_training_curves", "deepfm_training_curves", "roc", "calibration"):
        assert (tmp_path / "plots" / "demo" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_tfrecord_schema_inference(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    n = 1000
    features = {
        "user": rng.integers(0, 50, n).astype("int64"),
        "city": rng.choice(["x", "y", "z"], n),
        "price": rng.normal(10, 3, n).astype("float32"),
    }
    labels = (features["user"] < 20).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(250)
    tf_fm.data.write_tfrecords(dataset, str(tmp_path / "d"))
    shards = str(tmp_path / "d-*.tfrecord")
    out = tmp_path / "run"
    args = ["train", "--data", shards, "--format", "tfrecord", "--model", "fm"]
    assert cli.main([*args, "--epochs", "1", "--output", str(out)]) == 0
    schema = tf_fm.FeatureSchema.load(out / "schema.json")
    assert [(f.name, f.kind) for f in schema.features] == [
        ("user", "categorical"),
        ("city", "categorical"),
        ("price", "numeric"),
    ]
    assert schema["user"].dtype == "int64"  # int64 columns: ids
    target = tmp_path / "p.csv"
    assert cli.main(["predict", str(out), "--data", shards, "--output", str(target)]) == 0
    assert len(pd.read_csv(target)) == n
