"""The TensorFlow-only verification process: runs an export as TF Serving would, without tf_fm.

Run by path, never imported, by `tf_fm.export.verification`:

    python -I verify_child.py PAYLOAD_JSON RESULT_JSON

`-I` keeps the script's directory, PYTHONPATH and the user site off
`sys.path`; before anything else is imported, `install_guard` makes tf_fm
unimportable (a meta-path finder that refuses it, ahead of the
editable-install finder, and no `sys.path` entry holding a `tf_fm`
directory), and `main` checks at the end that no tf_fm module was loaded.
So this file imports only the standard library, numpy and TensorFlow (and
`tensorflow_serving` for the warm-up records), and repeats the few names of
`tf_fm.export.common` it needs (the tests check they agree).

The payload (JSON): `path` (the version directory), `rows` (input name ->
list of JSON values: strings surrogate-escaped, NaN numerics as NaN or
null), `batch_size`, `single_rows`. The result (JSON): the outputs of
`serving_default` at batch 1 (`tf2_single`, `tf1_single`) and at
`batch_size` (`tf2_batch`, `tf1_batch`), of `classification` /
`regression` on the same rows as `tf.Example`s (`tf2_<name>`,
`tf1_<name>`, with `tf1_<name>_shapes`), `tf1_empty_shapes`,
`method_names`, `warmup_replayed`, `tf_fm_import_attempts`, `timings`.
Tests import this module for its helpers; the guard is installed only
when it runs as a script. It is the one module of tf_fm that uses
`tf.compat.v1`, on purpose: the TF1 session loader is how TF Serving's C++
server runs a model.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

DEFAULT_SIGNATURE = "serving_default"
EXAMPLE_SIGNATURES = ("classification", "regression")
WARMUP_FILE = ("assets.extra", "tf_serving_warmup_requests")

_START = time.monotonic()


class BlockTfFm:
    """tf_fm cannot be imported here: the SavedModel must run on TensorFlow alone."""

    attempts = []

    def find_spec(self, name, path=None, target=None):
        if name == "tf_fm" or name.startswith("tf_fm."):
            self.attempts.append(name)
            raise ImportError("tf_fm is blocked in the TensorFlow-only verification process")
        return None


def install_guard() -> None:
    """Makes tf_fm unimportable in this process (it must not have been imported yet)."""
    sys.meta_path.insert(0, BlockTfFm())
    sys.path[:] = [p for p in sys.path if p and not os.path.isdir(os.path.join(p, "tf_fm"))]
    assert "tf_fm" not in sys.modules


if __name__ == "__main__":
    install_guard()  # before numpy and TensorFlow are imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

NUMPY_DTYPES = {"string": object, "int64": "int64", "float32": "float32"}


class Laps:
    """Seconds since the process started, at named points."""

    def __init__(self):
        self.timings = {}

    def __call__(self, name):
        self.timings[name] = round(time.monotonic() - _START, 3)


def encode(value: str | list) -> bytes | list:
    """A JSON string (or nested list of them) as bytes, undoing `surrogateescape`."""
    if isinstance(value, list):
        return [encode(v) for v in value]
    return value.encode("utf-8", "surrogateescape")


def column(values: list, dtype: str, shape: list) -> np.ndarray:
    """JSON values of one input -> the numpy batch fed to the signature."""
    if dtype == "string":
        array = np.empty(len(values), dtype=object)
        array[:] = [encode(v) for v in values]
        return array
    array = np.asarray([np.nan if v is None else v for v in values], dtype=NUMPY_DTYPES[dtype])
    return array.reshape([len(values), *shape])


def example(row: dict, dtypes: dict[str, str]) -> bytes:
    """One row (input name -> JSON value) as a serialized `tf.Example`.

    A missing numeric value (None / NaN) is left out of the Example.
    """
    feature = {}
    for name, dtype in dtypes.items():
        value = row[name]
        flat = value if isinstance(value, list) else [value]
        if dtype == "string":
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=encode(flat)))
        elif dtype == "int64":
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=flat))
        elif not any(v is None or v != v for v in flat):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=flat))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def tolist(outputs: dict) -> dict[str, list]:
    """Signature outputs as JSON lists (bytes decoded)."""
    out = {}
    for k, v in outputs.items():
        v = np.asarray(v)
        if v.dtype == object:
            v = np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(v)
        out[k] = v.tolist()
    return out


def shapes(outputs: dict) -> dict[str, list[int]]:
    """Output name -> shape (list)."""
    return {k: list(np.asarray(v).shape) for k, v in outputs.items()}


def concat(parts: list[dict]) -> dict[str, list]:
    """Outputs of several calls, concatenated along the batch."""
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]).tolist() for k in parts[0]}


class Sample:
    """The payload's rows and the signature's inputs: batches to feed."""

    def __init__(self, payload, inputs):
        self.columns = payload["rows"]
        self.inputs = inputs  # name -> (dtype name, shape after the batch axis)
        n = len(next(iter(self.columns.values())))
        self.num_rows = n
        self.single = list(range(min(n, payload["single_rows"])))
        self.batch = [i % n for i in range(payload["batch_size"])]

    def feed(self, index):
        """Input name -> numpy batch of the rows `index`."""
        return {
            name: column([self.columns[name][i] for i in index], dtype, shape)
            for name, (dtype, shape) in self.inputs.items()
        }

    @functools.cached_property
    def examples(self):
        """The batch rows as serialized `tf.Example`s."""
        dtypes = {name: dtype for name, (dtype, _) in self.inputs.items()}
        rows = ({name: self.columns[name][i] for name in dtypes} for i in self.batch)
        return np.asarray([example(row, dtypes) for row in rows], dtype=object)


def check_tf2(path: str, payload: dict, laps: Laps) -> tuple[dict, Sample]:
    """`tf.saved_model.load`: the signatures called as functions. Returns (result, sample)."""
    signatures = tf.saved_model.load(path).signatures
    predict = signatures[DEFAULT_SIGNATURE]
    specs = predict.structured_input_signature[1]
    inputs = {k: (s.dtype.name, [int(d) for d in s.shape[1:]]) for k, s in specs.items()}
    sample = Sample(payload, inputs)
    laps("tf2 load")

    def call(index):
        feed = sample.feed(index)
        return tolist(predict(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in feed.items()}))

    result = {
        "tf2_single": concat([call([i]) for i in sample.single]),
        "tf2_batch": call(sample.batch),
    }
    examples = tf.constant(sample.examples)
    for name in EXAMPLE_SIGNATURES:
        if name in signatures:
            result["tf2_" + name] = tolist(signatures[name](inputs=examples))
    laps("tf2 calls")
    return result, sample


def run_signature(session, signature_def, feed: dict) -> dict:
    """Feeds and fetches a signature's tensor names, as TF Serving's C++ server does."""
    missing = sorted(set(signature_def.inputs) - set(feed))
    extra = sorted(set(feed) - set(signature_def.inputs))
    if missing or extra:
        raise ValueError(f"inputs missing {missing}, unexpected {extra}")
    fetches = {k: v.name for k, v in signature_def.outputs.items()}
    return session.run(fetches, {signature_def.inputs[k].name: v for k, v in feed.items()})


def replay_warmup(path: str, session, defs) -> int:
    """Replays the warm-up records (a failing one fails TF Serving's load); returns the count."""
    from tensorflow_serving.apis import prediction_log_pb2

    replayed = 0
    for record in tf.compat.v1.io.tf_record_iterator(os.path.join(path, *WARMUP_FILE)):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError("warm-up record is not a predict_log")
        request = log.predict_log.request
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        feed = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out = run_signature(session, defs[name], feed)
        if not all(np.isfinite(np.asarray(v, np.float64)).all() for v in out.values()):
            raise ValueError("warm-up request gave a non-finite output")
        replayed += 1
    return replayed


def check_tf1(path: str, sample: Sample, laps: Laps) -> dict:
    """The TF1 session loader, TF Serving's way: the same calls, an empty batch, the warm-up."""
    result = {}
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        defs = tf.compat.v1.saved_model.loader.load(session, ["serve"], path).signature_def
        laps("tf1 load")

        def call(name, feed):
            return run_signature(session, defs[name], feed)

        single = [tolist(call(DEFAULT_SIGNATURE, sample.feed([i]))) for i in sample.single]
        result["tf1_single"] = concat(single)
        result["tf1_batch"] = tolist(call(DEFAULT_SIGNATURE, sample.feed(sample.batch)))
        result["tf1_empty_shapes"] = shapes(call(DEFAULT_SIGNATURE, sample.feed([])))
        for name in EXAMPLE_SIGNATURES:
            if name in defs:
                out = call(name, {"inputs": sample.examples})
                result["tf1_" + name] = tolist(out)
                result["tf1_" + name + "_shapes"] = shapes(out)
        result["method_names"] = {k: v.method_name for k, v in defs.items()}
        laps("tf1 calls")
        if os.path.exists(os.path.join(path, *WARMUP_FILE)):
            result["warmup_replayed"] = replay_warmup(path, session, defs)
            laps("warmup replay")
    return result


def main(argv: list[str]) -> None:
    """Reads the payload `argv[1]`, runs every check, writes the result to `argv[2]`."""
    laps = Laps()
    with open(argv[1], encoding="utf-8") as f:
        payload = json.load(f)
    laps("import tensorflow")
    result, sample = check_tf2(payload["path"], payload, laps)
    result["rows"] = sample.num_rows
    result.update(check_tf1(payload["path"], sample, laps))
    loaded = sorted(m for m in sys.modules if m == "tf_fm" or m.startswith("tf_fm."))
    assert not loaded, loaded
    result["tf_fm_import_attempts"] = BlockTfFm.attempts
    laps("done")
    result["timings"] = laps.timings
    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv)
