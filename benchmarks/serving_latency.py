"""Serving latency: tf_fm's DeepFM export against a plain Keras export of the same shape.

Both models are exported, loaded and timed in this one process, in
alternating blocks (every round times each model at each batch size before
the next round starts), so the machine's load falls on both alike.

* `tf_fm`: `tf_fm.DeepFM` over a `FeatureSchema` of 39 raw features like
  Criteo's (13 numeric, `log1p` with a default for NaN; 26 categorical
  strings, learned vocabularies of 1,000-5,000 values), exported by
  `tf_fm.export_saved_model`: the preprocessing runs inside the graph, so a
  request carries the raw strings and floats.
* `plain`: a Keras 3 model of the same shape on ready ids: 39 int64 inputs,
  one `keras.layers.Embedding` table (the same number of rows, k + 1 columns
  holding v and w), FM + DNN 400-400-400, exported by `model.export`.

Each is called through the SavedModel's `serving_default` signature, with
`tf.saved_model.load` (TF2) and with the TF1 session loader that TF
Serving's C++ server uses (`tf.compat.v1.saved_model.loader.load`, then one
`Session.make_callable` per batch size). Latency per call is p50 / p99 at
batch 1, 8 and 64; throughput is examples/s at batch 1000 (1000 over the
median call time). The ops each model executes per batch-1 call are counted
from the TF1 session's step statistics (`RunOptions.FULL_TRACE`), which also
give where a batch-1000 call spends its op time.

With `--xla`, a second table: the same tf_fm export with the model part
(after the preprocessing) compiled by XLA (`tf.function(jit_compile=True)`)
against it uncompiled, both through both loaders. The preprocessing (string
ops, hash tables) cannot be compiled, nor can `FieldEmbedding`'s id range
check, so both models of that table are built with `out_of_range="oov"`;
the script also reports what happens when the whole serving function is
compiled.

With `--compare-with DIR` (a directory holding another `tf_fm` package,
e.g. a `git worktree` of an earlier commit), a table of this tf_fm's export
against the same model exported by that one (in a child process), timed
in the same blocks.

Usage:
    python benchmarks/serving_latency.py --xla              # the README tables
    python benchmarks/serving_latency.py --rounds 2 --calls 100
    git worktree add /tmp/tf_fm_before HEAD~1
    python benchmarks/serving_latency.py --compare-with /tmp/tf_fm_before
"""

import argparse
import collections
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_fm  # noqa: E402
from tf_fm.export.servable import Servable  # noqa: E402

N_NUMERIC = 13
N_CATEGORICAL = 26
EMBEDDING_DIM = 16
DNN_UNITS = (400, 400, 400)
LATENCY_BATCHES = (1, 8, 64)
THROUGHPUT_BATCH = 1000
NUMERIC = [f"I{i}" for i in range(1, N_NUMERIC + 1)]
CATEGORICAL = [f"C{i}" for i in range(1, N_CATEGORICAL + 1)]


def criteo_like_rows(num_rows, seed=0):
    """Raw columns like Criteo's: float32 with 10% NaN, strings with Zipf-skewed values."""
    rng = np.random.default_rng(seed)
    sizes = np.random.default_rng(1).integers(1000, 5001, N_CATEGORICAL)
    rows = {}
    for name in NUMERIC:
        x = rng.lognormal(1.0, 1.5, num_rows).astype("float32")
        rows[name] = np.where(rng.random(num_rows) < 0.1, np.nan, x).astype("float32")
    for name, size in zip(CATEGORICAL, sizes, strict=True):
        rank = np.minimum(rng.zipf(1.1, num_rows), size) - 1
        rows[name] = np.array([f"{name}_{r:05x}" for r in rank], dtype=object)
    return rows


def randomize(model, seed=0):
    """Small random weights, so every row gets its own prediction."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.normal(scale=0.05, size=w.shape).astype(w.dtype) for w in model.get_weights()]
    )


def criteo_schema(train_rows):
    """13 numeric `log1p` features (default 0), 26 categorical vocabularies, adapted."""
    schema = tf_fm.FeatureSchema(
        [tf_fm.NumericFeature(n, transform="log1p", default=0.0) for n in NUMERIC]
        + [tf_fm.CategoricalFeature(n) for n in CATEGORICAL]
    )
    return schema.adapt(tf.data.Dataset.from_tensor_slices(train_rows).batch(4096))


def tf_fm_model(schema, **kwargs):
    model = tf_fm.DeepFM(schema, embedding_dim=EMBEDDING_DIM, dnn_units=DNN_UNITS, **kwargs)
    randomize(model)
    return model


def export_tf_fm(base, schema, sample_rows):
    """tf_fm.DeepFM on the raw Criteo-like features; returns (version dir, table rows)."""
    model = tf_fm_model(schema)
    path = tf_fm.export_saved_model(model, base, schema=schema, sample=sample_rows)
    rows = sum(f.get("vocabulary_size", 1) for f in schema.fields())
    return path, rows


def plain_model(num_rows):
    """39 int64 id inputs -> one Embedding table -> FM + DNN, in plain Keras 3."""
    names = [f"f{i}" for i in range(N_NUMERIC + N_CATEGORICAL)]
    inputs = {n: keras.Input(shape=(), dtype="int64", name=n) for n in names}
    ids = keras.ops.stack([inputs[n] for n in names], axis=1)  # (batch, 39)
    rows = keras.layers.Embedding(num_rows, EMBEDDING_DIM + 1)(ids)  # (batch, 39, k + 1)
    v, w = rows[..., :EMBEDDING_DIM], rows[..., EMBEDDING_DIM]
    square_of_sum = keras.ops.square(keras.ops.sum(v, axis=1))
    sum_of_squares = keras.ops.sum(keras.ops.square(v), axis=1)
    fm = 0.5 * keras.ops.sum(square_of_sum - sum_of_squares, axis=1, keepdims=True)
    hidden = keras.layers.Flatten()(v)
    for units in DNN_UNITS:
        hidden = keras.layers.Dense(units, activation="relu")(hidden)
    logit = keras.layers.Dense(1)(hidden) + fm + keras.ops.sum(w, axis=1, keepdims=True)
    return keras.Model(inputs, keras.ops.sigmoid(logit), name="plain")


def plain_ids(num_rows, num_fields, batch, rng):
    """Random ids, one column per field, each field in its own slice of the table."""
    per_field = num_rows // num_fields
    return {
        f"f{i}": (i * per_field + rng.integers(0, per_field, batch)).astype("int64")
        for i in range(num_fields)
    }


def export_plain(path, num_rows):
    model = plain_model(num_rows)
    randomize(model)
    model.export(str(path), verbose=False)
    return path


class Tf2Signature:
    """`serving_default` of `tf.saved_model.load`, called with tensors."""

    loader = "TF2 tf.saved_model.load"

    def __init__(self, path):
        self.function = tf.saved_model.load(str(path)).signatures["serving_default"]

    def prepare(self, columns):
        return {name: tf.constant(values) for name, values in columns.items()}

    def __call__(self, feeds):
        return self.function(**feeds)


class Tf1Session:
    """`serving_default` run in a TF1 session, fed and fetched by tensor name (TF Serving's way)."""

    loader = "TF1 session loader"

    def __init__(self, path):
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))
        signature = meta_graph.signature_def["serving_default"]
        self.names = sorted(signature.inputs)
        self.feeds = [signature.inputs[name].name for name in self.names]
        self.fetches = [signature.outputs[name].name for name in sorted(signature.outputs)]
        self.run = self.session.make_callable(self.fetches, feed_list=self.feeds)

    def prepare(self, columns):
        return [columns[name] for name in self.names]

    def __call__(self, feeds):
        return self.run(*feeds)

    def step_stats(self, feeds, repeats=1):
        """Op executions and op time (us) per call, from the session's step statistics.

        Returns:
            (Counter op type -> executions, Counter part of the model -> us),
            both per call, averaged over `repeats` calls.
        """
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        counts, micros = collections.Counter(), collections.Counter()
        for _ in range(repeats):
            metadata = tf.compat.v1.RunMetadata()
            feed_dict = dict(zip(self.feeds, feeds, strict=True))
            self.session.run(self.fetches, feed_dict, options=options, run_metadata=metadata)
            for device in metadata.step_stats.dev_stats:
                for node in device.node_stats:
                    # timeline_label: "<node name> = <op type>(<inputs>)"
                    if " = " not in node.timeline_label:
                        continue
                    counts[node.timeline_label.split(" = ")[1].split("(")[0]] += 1 / repeats
                    took = node.op_end_rel_micros - node.op_start_rel_micros
                    micros[part_of(node.node_name)] += took / repeats
        return collections.Counter({k: round(v) for k, v in counts.items()}), micros


# Name-scope keyword -> the part of a model its ops belong to.
PARTS = (
    ("feature_preprocessor", "preprocessing"),
    ("embedding", "embedding"),
    ("dnn", "DNN"),
    ("dense", "DNN"),
)


def part_of(node_name):
    return next((part for key, part in PARTS if key in node_name), "other")


def requests(columns, batch, count, rng):
    """`count` request batches of `batch` rows drawn from `columns`."""
    n = len(next(iter(columns.values())))
    out = []
    for _ in range(count):
        index = rng.integers(0, n, batch)
        out.append({name: values[index] for name, values in columns.items()})
    return out


def time_calls(caller, batches, calls):
    """Seconds per call, `calls` calls cycling over the prepared `batches`."""
    times = []
    for i in range(calls):
        feeds = batches[i % len(batches)]
        start = time.perf_counter()
        caller(feeds)
        times.append(time.perf_counter() - start)
    return times


def connect(exports, make_requests):
    """Callers per (model, loader) and prepared request batches per (model, loader, batch).

    Args:
        exports: model name -> SavedModel path.
        make_requests: model name -> function (batch, count) -> list of column dicts.
    """
    callers, batches = {}, {}
    for loader in (Tf2Signature, Tf1Session):
        for model, path in exports.items():
            caller = loader(path)
            callers[model, loader.loader] = caller
            for batch in (*LATENCY_BATCHES, THROUGHPUT_BATCH):
                raw = make_requests[model](batch, 4 if batch == THROUGHPUT_BATCH else 32)
                batches[model, loader.loader, batch] = [caller.prepare(r) for r in raw]
    return callers, batches


def measure(callers, batches, args):
    """Alternating blocks: per round, each (model, loader) at each batch size in turn."""
    times = collections.defaultdict(list)
    for key, caller in callers.items():  # warm-up
        for batch in (*LATENCY_BATCHES, THROUGHPUT_BATCH):
            time_calls(caller, batches[(*key, batch)], 5 if batch == THROUGHPUT_BATCH else 50)
    keys = list(callers)
    for round_index in range(args.rounds):
        order = keys if round_index % 2 == 0 else keys[::-1]
        for key in order:
            for batch in LATENCY_BATCHES:
                times[(*key, batch)] += time_calls(callers[key], batches[(*key, batch)], args.calls)
            big = batches[(*key, THROUGHPUT_BATCH)]
            times[(*key, THROUGHPUT_BATCH)] += time_calls(callers[key], big, args.big_calls)
    return times


def table(times, loaders, models):
    """The markdown table of `models` (a, b): p50 / p99 ms per batch size, examples/s at 1000.

    The ratios are a's time over b's (per call, or per example at batch 1000).
    """
    a, b = models
    lines = [
        f"| loader | batch | {a} p50 / p99 ms | {b} p50 / p99 ms | {a} / {b} p50 | p99 |",
        "|---|---|---|---|---|---|",
    ]
    for loader in loaders:
        for batch in LATENCY_BATCHES:
            ms = {
                m: np.percentile(np.asarray(times[m, loader, batch]) * 1e3, [50, 99])
                for m in models
            }
            ratio = ms[a] / ms[b]
            lines.append(
                f"| {loader} | {batch} | {ms[a][0]:.2f} / {ms[a][1]:.2f} "
                f"| {ms[b][0]:.2f} / {ms[b][1]:.2f} | {ratio[0]:.2f}x | {ratio[1]:.2f}x |"
            )
        rate = {m: THROUGHPUT_BATCH / np.median(times[m, loader, THROUGHPUT_BATCH]) for m in models}
        lines.append(
            f"| {loader} | {THROUGHPUT_BATCH} | {rate[a]:,.0f} ex/s | {rate[b]:,.0f} ex/s "
            f"| {rate[b] / rate[a]:.2f}x | |"
        )
    return "\n".join(lines)


def op_counts(ops):
    """Ops executed per batch-1 call, per model, with the most frequent op types."""
    lines = ["Ops executed per batch-1 call (TF1 session step statistics):", ""]
    for model, counts in ops.items():
        top = ", ".join(f"{t} {c}" for t, c in counts.most_common(12))
        lines.append(f"- {model}: {sum(counts.values())} ({top})")
    return "\n".join(lines)


def cost_breakdown(callers, batches, raw_batches):
    """Where a batch-1000 call goes: op time per part, and converting the request to tensors."""
    lines = [f"At batch {THROUGHPUT_BATCH} (TF1 session, op time per call, us):", ""]
    for model in ("tf_fm", "plain"):
        _, micros = callers[model, Tf1Session.loader].step_stats(
            batches[model, Tf1Session.loader, THROUGHPUT_BATCH][0], repeats=10
        )
        parts = ", ".join(f"{p} {micros[p]:,.0f}" for p in sorted(micros, key=micros.get)[::-1])
        columns = raw_batches[model]
        times = []
        for _ in range(20):
            start = time.perf_counter()
            [tf.constant(v) for v in columns.values()]
            times.append(time.perf_counter() - start)
        lines.append(
            f"- {model}: {parts}; the request's {len(columns)} columns to tensors "
            f"{np.median(times) * 1e3:.2f} ms"
        )
    return "\n".join(lines)


class XlaServable(Servable):
    """The tf_fm servable with the model after the preprocessing compiled by XLA."""

    def __init__(self, model, schema):
        super().__init__(model, schema)
        logit = tf_fm.describe_model(model).logit
        core = keras.Model(model.input, {"probability": model.output, "logit": logit})
        self.compiled = tf.function(lambda x: core(x, training=False), jit_compile=True)

    def predict(self, inputs):
        features = self.schema.preprocessor()({n: inputs[n] for n in self.input_specs})
        out = self.compiled({n: features[n] for n in self.schema.names})
        return {k: tf.reshape(out[k], [-1]) for k in self.output_names}


def whole_function_xla(path, schema, sample):
    """What compiling the whole serving function (preprocessing included) gives."""
    servable = Servable(tf_fm_model(schema), schema)
    servable.predict = tf.function(servable.predict, jit_compile=True)
    try:
        servable.write(path)
        function = tf.saved_model.load(str(path)).signatures["serving_default"]
        function(**{k: tf.constant(v[:2]) for k, v in sample.items()})
    except Exception as error:  # noqa: BLE001 - reported, not handled
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "unsupported" in line or "RET_CHECK" in line), "")
        return f"fails ({type(error).__name__}: {(reason or lines[-1])[:200]})"
    return "loads and runs"


def xla_exports(tmp, schema, sample):
    """The `out_of_range="oov"` tf_fm export with and without XLA on the model part."""
    model = tf_fm_model(schema, out_of_range="oov")
    exports = {}
    for name, servable in (
        ("XLA", XlaServable(model, schema)),
        ("no XLA", Servable(model, schema)),
    ):
        exports[name] = os.path.join(tmp, name.replace(" ", "_"))
        servable.write(exports[name])
    return exports


def run(exports, make_requests, args, models):
    """Measures `exports` and returns (table text, callers)."""
    callers, batches = connect(exports, make_requests)
    times = measure(callers, batches, args)
    return table(times, [Tf2Signature.loader, Tf1Session.loader], models), callers, batches


def export_with(package_dir, base, args):
    """This script's tf_fm export, written by the tf_fm in `package_dir` (a child process)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([package_dir, os.environ.get("PYTHONPATH", "")])
    )
    command = [sys.executable, os.path.abspath(__file__), "--export-to", base]
    command += ["--train-rows", str(args.train_rows)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def tables(tmp, args):
    """Every table this script prints, measured in this process."""
    rng = np.random.default_rng(2)
    schema = criteo_schema(criteo_like_rows(args.train_rows, seed=0))
    sample = criteo_like_rows(2000, seed=1)
    tf_fm_path, table_rows = export_tf_fm(os.path.join(tmp, "tf_fm"), schema, sample)
    exports = {"tf_fm": tf_fm_path, "plain": export_plain(os.path.join(tmp, "plain"), table_rows)}
    raw = lambda batch, count: requests(sample, batch, count, rng)  # noqa: E731
    ids = lambda batch, count: [  # noqa: E731
        plain_ids(table_rows, N_NUMERIC + N_CATEGORICAL, batch, rng) for _ in range(count)
    ]
    text, callers, batches = run(exports, {"tf_fm": raw, "plain": ids}, args, ("tf_fm", "plain"))
    loader = Tf1Session.loader
    ops = {m: callers[m, loader].step_stats(batches[m, loader, 1][0])[0] for m in exports}
    big = {"tf_fm": raw(THROUGHPUT_BATCH, 1)[0], "plain": ids(THROUGHPUT_BATCH, 1)[0]}
    breakdown = cost_breakdown(callers, batches, big)
    if args.compare_with:
        exports = {
            "tf_fm": tf_fm_path,
            "other": export_with(args.compare_with, os.path.join(tmp, "other"), args),
        }
        other, callers, batches = run(exports, {"tf_fm": raw, "other": raw}, args, list(exports))
        ops[f"tf_fm of {args.compare_with}"] = callers["other", loader].step_stats(
            batches["other", loader, 1][0]
        )[0]
        text += f"\n\ntf_fm against the tf_fm of {args.compare_with} ('other'):\n\n{other}"
    text += "\n\n" + op_counts(ops) + "\n\n" + breakdown
    if args.xla:
        exports = xla_exports(tmp, schema, sample)
        xla, _, _ = run(exports, {"XLA": raw, "no XLA": raw}, args, ("XLA", "no XLA"))
        whole = whole_function_xla(os.path.join(tmp, "whole"), schema, sample)
        text += f"\n\nXLA on the model part (out_of_range='oov'):\n\n{xla}"
        text += f"\n\nXLA on the whole serving function: {whole}"
    return text, table_rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating blocks")
    parser.add_argument("--calls", type=int, default=300, help="calls per block, batch <= 64")
    parser.add_argument("--big-calls", type=int, default=10, help="calls per block, batch 1000")
    parser.add_argument("--train-rows", type=int, default=200_000, help="rows adapted on")
    parser.add_argument("--xla", action="store_true", help="also the XLA comparison")
    parser.add_argument("--compare-with", help="a directory holding another tf_fm package")
    parser.add_argument("--export-to", help=argparse.SUPPRESS)  # the --compare-with child
    parser.add_argument("--out", help="also write the tables to this file")
    args = parser.parse_args(argv)
    if args.export_to:
        schema = criteo_schema(criteo_like_rows(args.train_rows, seed=0))
        print(export_tf_fm(args.export_to, schema, criteo_like_rows(2000, seed=1))[0])
        return
    load_before, started = os.getloadavg(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        text, table_rows = tables(tmp, args)
    header = (
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); table rows {table_rows:,}, "
        f"k = {EMBEDDING_DIM}, DNN {'-'.join(map(str, DNN_UNITS))}; {args.rounds} rounds; "
        f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}; "
        f"{time.time() - started:.0f} s."
    )
    print(header + "\n\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(header + "\n\n" + text + "\n")


if __name__ == "__main__":
    main()
