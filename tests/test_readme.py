"""The README's example runs as written (with a small dataset in place of the user's)."""

import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_example_runs(tmp_path, monkeypatch):
    example = python_blocks()[0]
    rng = np.random.default_rng(0)
    n = 256
    genres = rng.integers(0, 20, size=(n, 4))
    genres[:, 2:] = -1
    features = {
        "user": rng.integers(0, 10_000, size=n),
        "item": rng.integers(0, 50_000, size=n),
        "price": rng.random(n).astype("float32"),
        "genres": genres,
    }
    labels = (rng.random(n) < 0.3).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(64)
    monkeypatch.chdir(tmp_path)
    namespace = {"dataset": dataset}
    exec(compile(example, str(README), "exec"), namespace)
    assert (tmp_path / "deepfm.keras").exists()
    import keras

    restored = keras.saving.load_model(tmp_path / "deepfm.keras")
    np.testing.assert_array_equal(
        namespace["model"].predict(features, verbose=0), restored.predict(features, verbose=0)
    )


def test_readme_criteo_to_serving_runs(tmp_path, monkeypatch, shared_data):
    # The README's second example on the real Criteo sample: read, adapt, fit, export.
    block = python_blocks()[1]
    train = shared_data / "criteo_widresdnn_sample" / "train.csv"
    assert '"train.txt"' in block
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block.replace('"train.txt"', repr(str(train))), str(README), "exec"), namespace)
    versions = list((tmp_path / "saved_models" / "criteo_deepfm").iterdir())
    assert [v.name for v in versions] == ["1"]
    assert (versions[0] / "assets.extra" / "tf_fm.json").exists()


def _click_frame(n, seed):
    rng = np.random.default_rng(seed)
    import pandas as pd

    frame = pd.DataFrame({"age_bucket": rng.integers(0, 6, n), "city": rng.choice(["a", "b"], n)})
    logit = 0.5 * (frame["age_bucket"] - 2.5) + (frame["city"] == "a") - 0.5
    frame["click"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def test_readme_dataframe_path_runs(tmp_path, monkeypatch):
    block = python_blocks()[2]
    assert "read_dataframe(df" in block
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {"df": _click_frame(600, 0)})
    assert [v.name for v in (tmp_path / "saved_models" / "df_fm").iterdir()] == ["1"]


@pytest.mark.slow  # the run API and its export have quick tests of their own (test_training.py)
def test_readme_training_run_api_runs(tmp_path, monkeypatch):
    block = python_blocks()[3]
    assert len(block.strip().splitlines()) < 10
    for name, n, seed in (("train", 1200, 0), ("valid", 300, 1), ("test", 300, 2)):
        _click_frame(n, seed).to_csv(tmp_path / f"{name}.csv", index=False)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, str(README), "exec"), namespace)
    assert namespace["scores"]["auc"] > 0.6
    assert namespace["predictions"].shape == (300,)
    assert (tmp_path / "runs" / "deepfm" / "model.keras").is_file()  # the default output
    assert (tmp_path / "saved_models" / "deepfm" / "1" / "saved_model.pb").is_file()
