"""tf_fm.export: trained FM / DeepFM -> verified, versioned SavedModel for TF Serving."""

import datetime
import json
import math

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tf_fm
from tf_fm import (
    CategoricalFeature,
    FeatureSchema,
    MultiValuedFeature,
    NumericFeature,
)
from tf_fm import export as export_lib
from tf_fm.export import publish, verification
from tf_fm.export.rows import typed_columns
from tf_fm.export.servable import Servable
from tf_fm.models import describe_model

prediction_log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")

CRITEO_NUMERIC = [f"I{i}" for i in range(1, 14)]
CRITEO_CATEGORICAL = [f"C{i}" for i in range(1, 27)]
NUM_TRAIN = 4000
NUM_SAMPLE = 300


# --- Real data: Criteo rows, an adapted schema, briefly trained models ---


def read_criteo_columns(path):
    """All rows of a raw Criteo file as (dict of numpy columns, label)."""
    try:
        dataset = tf_fm.data.read_criteo(str(path), batch_size=2048)
        parts, labels = {}, []
        for features, label in dataset.as_numpy_iterator():
            for name, values in features.items():
                parts.setdefault(name, []).append(values)
            labels.append(label)
        columns = {name: np.concatenate(values) for name, values in parts.items()}
        return columns, np.concatenate(labels).astype("float32")
    except Exception:  # the readers are being finished elsewhere: plain pandas then
        names = ["label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL]
        frame = pd.read_csv(path, sep="\t", header=None, names=names, keep_default_na=False)
        columns = {
            c: pd.to_numeric(frame[c], errors="coerce").to_numpy("float32") for c in CRITEO_NUMERIC
        }
        columns.update({c: frame[c].astype(str).to_numpy(object) for c in CRITEO_CATEGORICAL})
        return columns, frame["label"].to_numpy("float32")


@pytest.fixture(scope="module")
def criteo():
    from conftest import shared_data_dir

    root = shared_data_dir()
    path = None if root is None else root / "criteo_widresdnn_sample" / "train.csv"
    if path is None or not path.exists():
        pytest.skip("criteo_widresdnn_sample not present")
    columns, label = read_criteo_columns(path)
    assert len(label) >= NUM_TRAIN + NUM_SAMPLE
    train = {k: v[:NUM_TRAIN] for k, v in columns.items()}
    sample = {k: v[NUM_TRAIN : NUM_TRAIN + NUM_SAMPLE] for k, v in columns.items()}
    schema = FeatureSchema(
        [NumericFeature(c, transform="log1p", default=0.0) for c in CRITEO_NUMERIC]
        + [CategoricalFeature(c, min_count=2) for c in CRITEO_CATEGORICAL],
        label="label",
    )
    dataset = tf.data.Dataset.from_tensor_slices((train, label[:NUM_TRAIN])).batch(256)
    schema.adapt(dataset)
    return {
        "schema": schema,
        "train": dataset,
        "sample": sample,
        "sample_label": label[NUM_TRAIN : NUM_TRAIN + NUM_SAMPLE],
    }


def train(criteo, builder, **kwargs):
    keras.utils.set_random_seed(0)
    schema = criteo["schema"]
    model = builder(schema.fields(), embedding_dim=8, **kwargs)
    tf_fm.compile_model(model, learning_rate=3e-3)
    model.fit(schema.preprocess(criteo["train"]), epochs=1, verbose=0)
    return model


def training_path_predictions(model, schema, rows):
    """The model on the tf.data-preprocessed rows: the reference the server must match."""
    dataset = tf.data.Dataset.from_tensor_slices(dict(rows)).batch(512)
    return model.predict(schema.preprocess(dataset), verbose=0).reshape(-1)


def validation_auc(scores, label):
    auc = keras.metrics.AUC(num_thresholds=2000)
    auc.update_state(label, scores)
    return float(auc.result())


@pytest.fixture(scope="module")
def fm_export(criteo, tmp_path_factory):
    model = train(criteo, tf_fm.FM)
    schema, sample = criteo["schema"], criteo["sample"]
    want = training_path_predictions(model, schema, sample)
    metrics = {"val_auc": validation_auc(want, criteo["sample_label"]), "val_rows": NUM_SAMPLE}
    export_dir = tmp_path_factory.mktemp("models") / "fm"
    path = tf_fm.export_saved_model(
        model, export_dir, schema=schema, sample=sample, metrics=metrics
    )
    return {"model": model, "path": path, "dir": export_dir, "want": want, "metrics": metrics}


@pytest.fixture(scope="module")
def fm_loaded(fm_export):
    return tf.saved_model.load(str(fm_export["path"]))


def fm_export_metadata(export):
    return export_lib.read_metadata(export["path"])


def sample_tensors(sample, index=slice(None)):
    return {k: tf.constant(v[index]) for k, v in sample.items()}


# --- Export + verification in a TensorFlow-only process ---


def test_fm_export_is_verified_and_serves_the_training_path(criteo, fm_export, fm_loaded):
    path = fm_export["path"]
    assert path == fm_export["dir"] / "1"
    assert sorted(p.name for p in fm_export["dir"].iterdir()) == ["1"]  # no staging dir left
    for name in ("saved_model.pb", "variables", "assets.extra"):
        assert (path / name).exists()
    report = fm_export_metadata(fm_export)["verification"]
    assert report["rows"] == NUM_SAMPLE and report["batch_sizes"] == [1, 1000]
    assert report["loaders"] == ["tf.saved_model.load", "tf.compat.v1.saved_model.loader.load"]
    checks = report["max_abs_diff"]
    for loader in ("tf1", "tf2"):
        for check in (
            "serving_default batch=1 probability",
            "serving_default batch=1000 probability",
            "serving_default batch=1000 logit",
            "classification scores[:, 1]",
            "regression outputs",
        ):
            assert checks[f"{loader} {check}"] <= 1e-5, (loader, check)
    assert report["warmup_records_replayed"] == 10
    # Independently of tf_fm.export: the served model (loaded here) on the raw
    # rows == the trained model on the tf.data-preprocessed rows.
    out = fm_loaded.signatures["serving_default"](**sample_tensors(criteo["sample"]))
    np.testing.assert_allclose(out["probability"].numpy(), fm_export["want"], atol=1e-5)
    p = out["probability"].numpy().astype(np.float64)
    np.testing.assert_allclose(out["logit"].numpy(), np.log(p / (1 - p)), atol=1e-4)
    assert np.unique(np.round(p, 5)).size > 10  # a trained model, not a constant
    assert fm_export["metrics"]["val_auc"] > 0.55


@pytest.mark.slow
def test_deepfm_export_is_verified(criteo, tmp_path):
    model = train(criteo, tf_fm.DeepFM, dnn_units=(16,))
    schema, sample = criteo["schema"], criteo["sample"]
    path = tf_fm.export_saved_model(model, tmp_path / "deepfm", schema=schema, sample=sample)
    metadata = fm_export_metadata({"path": path})
    assert metadata["logit"] == "the input of the model's PredictionHead"
    assert max(metadata["verification"]["max_abs_diff"].values()) <= 1e-5
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["serving_default"](**sample_tensors(sample))
    want = training_path_predictions(model, schema, sample)
    np.testing.assert_allclose(out["probability"].numpy(), want, atol=1e-5)
    # The logit output is the PredictionHead's input: sigmoid(logit) == probability.
    np.testing.assert_allclose(tf.sigmoid(out["logit"]).numpy(), want, atol=1e-6)


def ids_model_and_sample():
    """An FM on ids and values (no schema): its inputs already are the raw inputs."""
    fields = [
        CategoricalFeature("item", encoding="integer", num_ids=50),
        NumericFeature("price"),
        MultiValuedFeature("tags", encoding="integer", num_ids=20, max_length=3),
    ]
    model = tf_fm.FM(fields, embedding_dim=4)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(scale=0.3, size=w.shape) for w in model.get_weights()])
    sample = {
        "item": rng.integers(0, 50, 40),
        "price": rng.normal(size=40).astype("float32"),
        "tags": np.where(rng.random((40, 3)) < 0.3, -1, rng.integers(0, 20, (40, 3))),
    }
    return model, sample


def check_ids_export(model, sample, path):
    signature = export_lib.read_metadata(path)["signatures"]["serving_default"]
    assert signature["inputs"] == {
        "item": {"dtype": "int64", "shape": [-1]},
        "price": {"dtype": "float32", "shape": [-1]},
        "tags": {"dtype": "int64", "shape": [-1, 3]},
    }
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in sample.items()})
    want = model.predict({k: np.asarray(v) for k, v in sample.items()}, verbose=0).reshape(-1)
    np.testing.assert_allclose(out["probability"].numpy(), want, atol=1e-6)


def test_model_on_raw_ids_exports_without_a_schema(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "verify", fake_verify)  # real: the slow test below
    model, sample = ids_model_and_sample()
    check_ids_export(
        model, sample, tf_fm.export_saved_model(model, tmp_path / "ids", sample=sample)
    )


def test_verification_fails_on_any_mismatch(criteo, fm_export, monkeypatch):
    # The comparison of `verify` on a doctored child result: one TF1 value off by 1e-3.
    captured = {}

    def fake_child(payload, timeout):
        captured["payload"] = payload
        n = len(next(iter(payload["rows"].values())))
        p = [float(fm_export["want"][i % n]) for i in range(payload["batch_size"])]
        logit = [math.log(x / (1 - x)) for x in p]
        single = {"probability": p[:16], "logit": logit[:16]}
        batch = {"probability": p, "logit": logit}
        bad = {"probability": list(p), "logit": logit}
        bad["probability"][7] += 1e-3
        classified = {"scores": [[1 - x, x] for x in p], "classes": [["0", "1"]] * len(p)}
        return {
            "tf2_single": single,
            "tf2_batch": batch,
            "tf1_single": single,
            "tf1_batch": bad,
            "tf2_classification": classified,
            "tf1_classification": classified,
            "tf1_classification_shapes": {"scores": [len(p), 2], "classes": [len(p), 2]},
            "tf1_empty_shapes": {"probability": [0], "logit": [0]},
        }

    monkeypatch.setattr(verification, "run_child", fake_child)
    expected = {"probability": fm_export["want"]}
    with pytest.raises(export_lib.VerificationError, match="tf1 serving_default batch=1000"):
        export_lib.verify(fm_export["path"], criteo["sample"], expected=expected)
    rows = captured["payload"]["rows"]
    assert sorted(rows) == sorted(criteo["schema"].names)  # exactly the signature's inputs
    assert isinstance(rows["C1"][0], str) and isinstance(rows["I1"][0], float)
    assert len(rows["C1"]) == NUM_SAMPLE and captured["payload"]["batch_size"] == 1000


def test_signatures_and_method_names_in_saved_model_pb(criteo, fm_export):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((fm_export["path"] / "saved_model.pb").read_bytes())
    signatures = proto.meta_graphs[0].signature_def
    assert signatures["serving_default"].method_name == "tensorflow/serving/predict"
    assert signatures["classification"].method_name == "tensorflow/serving/classify"
    assert signatures["regression"].method_name == "tensorflow/serving/regress"
    schema = criteo["schema"]
    inputs = signatures["serving_default"].inputs
    assert sorted(inputs) == sorted(schema.names)
    for feature in schema.features:
        assert tf.as_dtype(inputs[feature.name].dtype).name == feature.raw_dtype
        assert [d.size for d in inputs[feature.name].tensor_shape.dim] == [-1]
    assert sorted(signatures["serving_default"].outputs) == ["logit", "probability"]
    assert list(signatures["classification"].inputs) == ["inputs"]
    assert sorted(signatures["classification"].outputs) == ["classes", "scores"]
    assert list(signatures["regression"].outputs) == ["outputs"]


def test_no_stale_fingerprint(fm_export):
    # fingerprint.pb hashed the saved_model.pb before the method-name edit: it is removed
    # (no public API writes one); loaders take it as optional (the verification loaded
    # the export with both). A fingerprint left there would have to match the file.
    path = fm_export["path"]
    assert not (path / "fingerprint.pb").exists()
    with pytest.raises(FileNotFoundError):
        tf.saved_model.experimental.read_fingerprint(str(path))


def test_classify_and_regress_on_tf_examples(criteo, fm_export, fm_loaded):
    sample = criteo["sample"]
    rows = range(20)

    def example(i, drop=()):
        feature = {}
        for name in CRITEO_NUMERIC:
            value = float(sample[name][i])
            if not math.isnan(value) and name not in drop:
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        for name in CRITEO_CATEGORICAL:
            if name not in drop:
                value = sample[name][i]
                value = value if isinstance(value, bytes) else str(value).encode()
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    examples = tf.constant([example(i) for i in rows])
    out = fm_loaded.signatures["classification"](inputs=examples)
    scores = out["scores"].numpy()
    assert scores.shape == (20, 2) and out["classes"].numpy().tolist() == [[b"0", b"1"]] * 20
    np.testing.assert_allclose(scores[:, 1], fm_export["want"][:20], atol=1e-5)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
    regressed = fm_loaded.signatures["regression"](inputs=examples)["outputs"].numpy()
    np.testing.assert_allclose(regressed, fm_export["want"][:20], atol=1e-5)
    # Missing features in an Example: numeric -> NaN -> the default 0; string -> "".
    sparse = fm_loaded.signatures["classification"](inputs=tf.constant([example(0, ("I1", "C3"))]))
    dense = {k: tf.constant(v[:1]) for k, v in sample.items()}
    dense["I1"] = tf.constant([0.0])
    dense["C3"] = tf.constant([""])
    want = fm_loaded.signatures["serving_default"](**dense)["probability"].numpy()
    np.testing.assert_allclose(sparse["scores"].numpy()[:, 1], want, atol=1e-6)
    # An int64_list for a float feature is an error naming it.
    wrong = tf.train.Example()
    wrong.features.feature["I1"].int64_list.value.append(3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="I1"):
        fm_loaded.signatures["regression"](inputs=tf.constant([wrong.SerializeToString()]))


# --- Warm-up and metadata ---


def test_warmup_requests_parse_and_match_the_signature(criteo, fm_export):
    file = fm_export["path"] / "assets.extra" / "tf_serving_warmup_requests"
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(file))]
    assert 0 < len(records) <= 1000
    assert len(records) == 10
    schema = criteo["schema"]
    for i, record in enumerate(records):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        assert request.model_spec.name == "fm"
        assert sorted(request.inputs) == sorted(schema.names)
        for feature in schema.features:
            tensor = request.inputs[feature.name]
            assert tf.as_dtype(tensor.dtype).name == feature.raw_dtype
            assert [d.size for d in tensor.tensor_shape.dim] == [1]
        value = tf.make_ndarray(request.inputs["C1"])[0]
        expected = criteo["sample"]["C1"][i]
        assert value == (expected if isinstance(expected, bytes) else expected.encode())
        np.testing.assert_array_equal(
            tf.make_ndarray(request.inputs["I5"]), criteo["sample"]["I5"][i : i + 1]
        )
    # Read back (what `tf-fm verify` checks an export on): the first 10 sample rows.
    rows = export_lib.warmup_rows(fm_export["path"])
    assert sorted(rows) == sorted(schema.names)
    np.testing.assert_array_equal(rows["I5"], criteo["sample"]["I5"][:10])
    assert export_lib.warmup_rows(fm_export["path"] / "no such version") is None


def test_metadata(criteo, fm_export):
    metadata = fm_export_metadata(fm_export)
    assert metadata["format"] == "tf_fm.export" and metadata["version"] == 1
    assert metadata["model_name"] == "fm" and metadata["task"] == "binary"
    assert FeatureSchema.from_dict(metadata["schema"]) == criteo["schema"]
    assert metadata["metrics"] == pytest.approx(fm_export["metrics"])
    versions = metadata["library_versions"]
    assert versions["tensorflow"] == tf.__version__ and versions["keras"] == keras.__version__
    assert versions["tf_fm"] == tf_fm.__version__
    created = datetime.datetime.fromisoformat(metadata["created"])
    assert abs(datetime.datetime.now(datetime.timezone.utc) - created).total_seconds() < 3600
    signatures = metadata["signatures"]
    assert signatures["classification"]["method_name"] == "tensorflow/serving/classify"
    assert signatures["classification"]["outputs"]["scores"] == {
        "dtype": "float32",
        "shape": [-1, 2],
    }
    assert sorted(signatures["serving_default"]["inputs"]) == sorted(criteo["schema"].names)
    assert metadata["warmup"]["records"] == 10 and not metadata["sample_is_synthetic"]
    json.dumps(metadata, allow_nan=False)  # strict JSON


# --- Clients: REST bodies and gRPC requests ---


def serve_rest(loaded, body):
    """What TF Serving does with a REST body: tensors of the signature's dtypes, then run."""
    signature = loaded.signatures[body.get("signature_name", "serving_default")]
    specs = signature.structured_input_signature[1]
    if "instances" in body:
        columns = {k: [row[k] for row in body["instances"]] for k in body["instances"][0]}
    else:
        columns = body["inputs"]
    assert sorted(columns) == sorted(specs)  # exactly the signature's inputs
    tensors = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in columns.items()}
    return signature(**tensors)


def test_rest_json_rows_and_columns(criteo, fm_export, fm_loaded):
    schema = criteo["schema"]
    frame = pd.DataFrame(criteo["sample"]).iloc[:25].copy()
    frame.insert(0, "label", criteo["sample_label"][:25])  # extra columns are left out
    frame["C1"] = frame["C1"].map(lambda b: b.decode() if isinstance(b, bytes) else b)
    assert frame["I1"].isna().any()  # missing numeric values travel as NaN
    for form in (schema, fm_export["path"]):
        text = tf_fm.to_rest_json(frame, schema=form)
        assert "NaN" in text
        body = json.loads(text)
        assert body["signature_name"] == "serving_default" and len(body["instances"]) == 25
        for row in body["instances"]:
            assert sorted(row) == sorted(schema.names)
            assert all(isinstance(row[c], str) for c in CRITEO_CATEGORICAL)
            assert all(isinstance(row[c], float) for c in CRITEO_NUMERIC)
        got = serve_rest(fm_loaded, body)["probability"].numpy()
        np.testing.assert_allclose(got, fm_export["want"][:25], atol=1e-5)
    body = json.loads(tf_fm.to_rest_json(frame, columnar=True, schema=schema))
    assert set(body) == {"signature_name", "inputs"} and sorted(body["inputs"]) == sorted(
        schema.names
    )
    got = serve_rest(fm_loaded, body)["probability"].numpy()
    np.testing.assert_allclose(got, fm_export["want"][:25], atol=1e-5)
    # A list of row dicts gives the same body as the DataFrame.
    records = frame.to_dict("records")
    assert json.loads(tf_fm.to_rest_json(records, schema=schema)) == json.loads(
        tf_fm.to_rest_json(frame, schema=schema)
    )
    with pytest.raises(ValueError, match="I1"):
        tf_fm.to_rest_json(frame, schema=schema, allow_nan=False)
    with pytest.raises(KeyError, match="C7"):
        tf_fm.to_rest_json(frame.drop(columns=["C7"]), schema=schema)


def test_predict_request(criteo, fm_export, fm_loaded):
    schema = criteo["schema"]
    rows = {k: v[:25] for k, v in criteo["sample"].items()}
    request = tf_fm.to_predict_request(rows, "fm", schema=schema, version=1)
    assert isinstance(request, predict_pb2.PredictRequest)
    assert request.model_spec.name == "fm" and request.model_spec.version.value == 1
    assert request.model_spec.signature_name == "serving_default"
    assert sorted(request.inputs) == sorted(schema.names)
    for feature in schema.features:
        tensor = request.inputs[feature.name]
        assert tf.as_dtype(tensor.dtype).name == feature.raw_dtype
        assert [d.size for d in tensor.tensor_shape.dim] == [25]
    # What the server does with it: make_ndarray per input, run the signature.
    feeds = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    got = fm_loaded.signatures["serving_default"](**feeds)["probability"].numpy()
    np.testing.assert_allclose(got, fm_export["want"][:25], atol=1e-5)
    # Dtypes come from the signature: ints given for a float feature become float32.
    rows_int = dict(rows, I1=np.arange(25))
    request = tf_fm.to_predict_request(rows_int, "fm", schema=fm_export["path"])
    assert tf.as_dtype(request.inputs["I1"].dtype) == tf.float32


# --- Bad requests, at the signature: errors or sane outputs, never a crash ---


def test_bad_requests(criteo, fm_export, fm_loaded):
    serve = fm_loaded.signatures["serving_default"]
    rows = sample_tensors(criteo["sample"], slice(0, 3))
    # A missing feature: an error naming it.
    partial = {k: v for k, v in rows.items() if k != "C5"}
    with pytest.raises(TypeError, match="C5"):
        serve(**partial)
    # A wrong dtype: an error.
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        serve(**dict(rows, I3=tf.constant(["12", "3", "x"])))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        serve(**dict(rows, C2=tf.constant([1.0, 2.0, 3.0])))
    # Unseen categories: the OOV id, a finite prediction, the same for any unseen value.
    unseen_a = serve(**dict(rows, C3=tf.constant(["never seen"] * 3)))["probability"].numpy()
    unseen_b = serve(**dict(rows, C3=tf.constant(["nor this"] * 3)))["probability"].numpy()
    assert np.isfinite(unseen_a).all()
    np.testing.assert_array_equal(unseen_a, unseen_b)
    # An empty batch: empty outputs.
    empty = serve(**{k: v[:0] for k, v in rows.items()})
    assert empty["probability"].shape == (0,) and empty["logit"].shape == (0,)
    empty = fm_loaded.signatures["classification"](inputs=tf.constant([], tf.string))
    assert empty["scores"].shape == (0, 2)
    # The process is fine and the model still serves.
    out = serve(**rows)["probability"].numpy()
    np.testing.assert_allclose(out, fm_export["want"][:3], atol=1e-5)


# --- Versions, overwrite, atomic publishing (small model, real SavedModels) ---


@pytest.fixture(scope="module")
def small():
    raw = {
        "user": np.array(["u1", "u2", "u1", "u3", "u2", "u1", "u4", ""], dtype=object),
        "price": np.array([1.0, 2.5, np.nan, 4.0, 5.5, 0.5, 7.0, 8.0], dtype="float32"),
        "genres": np.array(["A|B", "B", "", "A|B|C", "C", "A", "B|C", "E"], dtype=object),
    }
    schema = FeatureSchema(
        [
            CategoricalFeature("user"),
            NumericFeature("price", transform="standardize", default=0.0),
            MultiValuedFeature("genres", max_length=3),
        ]
    ).adapt(tf.data.Dataset.from_tensor_slices(raw).batch(4))
    model = tf_fm.FM(schema.fields(), embedding_dim=4)
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(scale=0.5, size=w.shape) for w in model.get_weights()])
    return {"model": model, "schema": schema, "raw": raw}


def fake_verify(path, sample, expected=None, atol=1e-5):
    return {"signatures": {}, "stub": True}


def test_version_numbering_overwrite_and_synthetic_sample(small, tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "verify", fake_verify)  # the real one runs above
    base = tmp_path / "small"
    base.mkdir()
    (base / "README.md").write_text("not a version")
    for name in ("abc", "v3", ".tmp-9-leftover", "1", "5"):  # only 1 and 5 are versions
        (base / name).mkdir()

    def export(**kwargs):
        return tf_fm.export_saved_model(small["model"], base, schema=small["schema"], **kwargs)

    path = export()  # no sample: a few rows made from the schema
    assert path == base / "6"  # largest existing + 1
    assert export(version=2, sample=small["raw"]) == base / "2"
    assert export_lib.list_versions(base) == [1, 2, 5, 6]
    before = (base / "2" / "assets.extra" / "tf_fm.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        export(version=2)
    assert (base / "2" / "assets.extra" / "tf_fm.json").read_text() == before
    (base / "2" / "marker").write_text("old")
    assert export(version=2, overwrite=True, metrics={"auc": 0.5}) == base / "2"
    assert not (base / "2" / "marker").exists()
    assert export_lib.read_metadata(base / "2")["metrics"] == {"auc": 0.5}
    hidden = sorted(p.name for p in base.iterdir() if p.name.startswith("."))
    assert hidden == [".tmp-9-leftover"]  # no staging or retired directory left
    with pytest.raises(ValueError, match="version"):
        export(version=-1)
    with pytest.raises(ValueError, match="warmup_rows"):
        export(warmup_rows=1001)
    # The synthetic-sample export: string inputs for the multi-valued feature too.
    metadata = export_lib.read_metadata(path)
    assert metadata["sample_is_synthetic"]
    assert metadata["signatures"]["serving_default"]["inputs"] == {
        "genres": {"dtype": "string", "shape": [-1]},
        "price": {"dtype": "float32", "shape": [-1]},
        "user": {"dtype": "string", "shape": [-1]},
    }
    loaded = tf.saved_model.load(str(path))
    raw = {k: tf.constant(v) for k, v in small["raw"].items()}
    got = loaded.signatures["serving_default"](**raw)["probability"].numpy()
    want = small["schema"].serving_model(small["model"]).predict(small["raw"], verbose=0)
    np.testing.assert_allclose(got, want.reshape(-1), atol=1e-6)


def test_a_failed_export_publishes_nothing(small, tmp_path, monkeypatch):
    base = tmp_path / "small"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"the published version 1")
    good = (base / "1" / "saved_model.pb").read_bytes()

    def fail(*args, **kwargs):
        raise export_lib.VerificationError("simulated failure")

    # Verification fails for a new version...
    monkeypatch.setattr(publish, "verify", fail)
    with pytest.raises(export_lib.VerificationError, match="simulated"):
        tf_fm.export_saved_model(small["model"], base, schema=small["schema"], sample=small["raw"])
    assert sorted(p.name for p in base.iterdir()) == ["1"]  # no version 2, no temp dir
    # ... writing the warm-up fails while overwriting version 1.
    monkeypatch.setattr(publish, "verify", fake_verify)
    monkeypatch.setattr(publish, "write_warmup", fail)
    with pytest.raises(export_lib.VerificationError, match="simulated"):
        tf_fm.export_saved_model(
            small["model"], base, schema=small["schema"], version=1, overwrite=True
        )
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    assert (base / "1" / "saved_model.pb").read_bytes() == good  # version 1 untouched


# --- What is exported: the model's own task and logit, the schema passed explicitly ---


def test_deepfm_logit_is_its_prediction_head_input(small):
    model = tf_fm.DeepFM(small["schema"].fields(), embedding_dim=4, dnn_units=(8,))
    servable = Servable(model, small["schema"])
    assert servable.task == "binary" and not servable.logit_from_probability
    columns = typed_columns(small["raw"], servable.input_specs)
    out = servable.outputs_numpy(columns)
    features = small["schema"].preprocess(tf.data.Dataset.from_tensor_slices(small["raw"]).batch(8))
    logit = keras.Model(model.input, describe_model(model).logit)
    np.testing.assert_allclose(out["logit"], logit.predict(features, verbose=0).reshape(-1))
    np.testing.assert_allclose(
        out["probability"], model.predict(features, verbose=0).reshape(-1), atol=1e-6
    )


def test_serving_model_without_schema_is_refused(small, tmp_path):
    serving = small["schema"].serving_model(small["model"])
    with pytest.raises(ValueError, match=r"schema=schema"):
        tf_fm.export_saved_model(serving, tmp_path / "wrapped", task="binary")
    assert not (tmp_path / "wrapped").exists()


def own_model():
    """A Keras model of the user's, not ending in a PredictionHead."""
    x = keras.Input(shape=(), dtype="float32", name="x")
    hidden = keras.layers.Dense(3, activation="tanh")(keras.ops.expand_dims(x, 1))
    return keras.Model({"x": x}, keras.layers.Dense(1, activation="sigmoid")(hidden))


def test_own_keras_model_needs_the_task(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "verify", fake_verify)
    model, sample = own_model(), {"x": np.linspace(-2, 2, 9).astype("float32")}
    with pytest.raises(ValueError, match="task='binary'"):
        tf_fm.export_saved_model(model, tmp_path / "own", sample=sample)
    path = tf_fm.export_saved_model(model, tmp_path / "own", sample=sample, task="binary")
    assert export_lib.read_metadata(path)["logit"] == "log(p) - log1p(-p)"
    out = tf.saved_model.load(str(path)).signatures["serving_default"](x=tf.constant(sample["x"]))
    p = model.predict(sample, verbose=0).reshape(-1).astype(np.float64)
    np.testing.assert_allclose(out["probability"].numpy(), p, atol=1e-6)
    np.testing.assert_allclose(out["logit"].numpy(), np.log(p / (1 - p)), atol=1e-4)


def test_task_must_agree_with_the_prediction_head(small):
    with pytest.raises(ValueError, match="PredictionHead"):
        Servable(small["model"], small["schema"], task="regression")
    assert Servable(small["model"], small["schema"], task="binary").task == "binary"


# --- Slow: end to end on the real verification for the other entry points ---


@pytest.mark.slow
def test_synthetic_sample_is_verified(small, tmp_path):
    path = tf_fm.export_saved_model(small["model"], tmp_path / "small", schema=small["schema"])
    metadata = export_lib.read_metadata(path)
    assert metadata["schema"] == small["schema"].to_dict() and metadata["sample_is_synthetic"]
    assert metadata["logit"] == "the input of the model's PredictionHead"
    assert metadata["verification"]["warmup_records_replayed"] == 10
    assert sorted(metadata["signatures"]) == ["classification", "regression", "serving_default"]


@pytest.mark.slow
def test_model_on_raw_ids_is_verified_without_a_schema(tmp_path):
    model, sample = ids_model_and_sample()
    path = tf_fm.export_saved_model(model, tmp_path / "ids", sample=sample)
    assert export_lib.read_metadata(path)["verification"]["rows"] == 40
    check_ids_export(model, sample, path)


@pytest.mark.slow
def test_regression_model_export(small, tmp_path):
    model = tf_fm.FM(small["schema"].fields(), embedding_dim=4, task="regression")
    path = tf_fm.export_saved_model(
        model, tmp_path / "reg", schema=small["schema"], sample=small["raw"]
    )
    signatures = export_lib.read_metadata(path)["signatures"]
    assert sorted(signatures) == ["regression", "serving_default"]
    assert list(signatures["serving_default"]["outputs"]) == ["prediction"]
    assert signatures["regression"]["method_name"] == "tensorflow/serving/regress"
