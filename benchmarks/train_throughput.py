"""Training throughput of FM and DeepFM vs table size: tf_fm's default against stock Keras.

Every configuration runs in its own subprocess (so its peak memory is its own),
one after another in the same invocation, so the columns compare side by side.

* `tf_fm`: `tf_fm.FM` / `tf_fm.DeepFM` compiled by `tf_fm.compile_model`
  (FieldEmbedding's resource gather + `LazyAdam`).
* `stock`: the same network on `keras.layers.Embedding` (one fused table with
  offsets, like ours) trained with `keras.optimizers.Adam`.

26 categorical fields (table rows split evenly) + 13 numeric fields, k = 16,
DeepFM DNN 400-400-400. Ids are Zipf(1.2)-distributed per field (real CTR ids
are skewed), or uniform with `--ids uniform`. Examples/s are measured inside
`model.fit` over the steps after a warm-up, on 16 pre-built batches held in
memory (a dataset of whole batches), so the input pipeline is not what is timed.

Usage:
    python benchmarks/train_throughput.py                 # the full table
    python benchmarks/train_throughput.py --rows 1e4 1e6 --batch 1024 --models fm
"""

import argparse
import json
import os
import subprocess
import sys
import time

N_CATEGORICAL = 26
N_NUMERIC = 13
EMBEDDING_DIM = 16


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def make_batches(rows, batch_size, n_batches, ids, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    size = rows // N_CATEGORICAL
    n = batch_size * n_batches
    features = {}
    if ids == "zipf":
        ranks = np.arange(1, size + 1, dtype=np.float64)
        cdf = np.cumsum(ranks**-1.2)
        cdf /= cdf[-1]
    for i in range(N_CATEGORICAL):
        if ids == "zipf":
            rank = np.minimum(np.searchsorted(cdf, rng.random(n)), size - 1)
            features[f"C{i + 1}"] = rng.permutation(size)[rank].astype("int64")
        else:
            features[f"C{i + 1}"] = rng.integers(0, size, n, dtype="int64")
    for i in range(N_NUMERIC):
        features[f"I{i + 1}"] = rng.normal(size=n).astype("float32")
    labels = (rng.random(n) < 0.25).astype("float32")
    distinct = np.mean(
        [
            len(
                np.unique(
                    np.stack(
                        [
                            features[f"C{i + 1}"][b * batch_size : (b + 1) * batch_size] + i * size
                            for i in range(N_CATEGORICAL)
                        ]
                    )
                )
            )
            for b in range(min(n_batches, 4))
        ]
    )
    return features, labels, size, distinct


def stock_model(fields, deep, steps_per_execution=1):
    """The same FM / DeepFM on keras.layers.Embedding (keras.ops.take lookup)."""
    import keras
    from keras import ops

    import tf_fm

    cat = [f for f in fields if f.kind == "categorical"]
    num = [f for f in fields if f.kind == "numeric"]
    offsets, total = [], 0
    for f in cat:
        offsets.append(total)
        total += f.num_ids
    inputs = {f.name: keras.Input(shape=(), dtype="int64", name=f.name) for f in cat}
    inputs.update({f.name: keras.Input(shape=(), dtype="float32", name=f.name) for f in num})
    ids = ops.stack([inputs[f.name] for f in cat], axis=1) + ops.array(offsets, "int64")
    x = ops.stack([inputs[f.name] for f in num], axis=1)  # (batch, numeric)
    init = keras.initializers.RandomNormal(stddev=0.01)
    cat_v = keras.layers.Embedding(total, EMBEDDING_DIM, embeddings_initializer=init)(ids)
    cat_w = keras.layers.Embedding(total, 1, embeddings_initializer="zeros")(ids)
    num_v = keras.layers.EinsumDense("bn,nk->bnk", (len(num), EMBEDDING_DIM))(x)
    num_w = keras.layers.Dense(1, use_bias=False)(x)
    vectors = ops.concatenate([cat_v, num_v], axis=1)  # (batch, fields, k)
    linear = ops.sum(cat_w[..., 0], axis=1, keepdims=True) + num_w
    parts = [linear, tf_fm.FMInteraction()(vectors)]
    if deep:
        h = keras.layers.Flatten()(vectors)
        for units in (400, 400, 400):
            h = keras.layers.Dropout(0.5)(keras.layers.Dense(units, activation="relu")(h))
        parts.append(keras.layers.Dense(1)(h))
    logit = tf_fm.GlobalBias()(parts)
    model = keras.Model(inputs, keras.layers.Activation("sigmoid", dtype="float32")(logit))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        steps_per_execution=steps_per_execution,
    )
    return model


def run_one(config):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    import tf_fm

    rows, batch_size = int(config["rows"]), config["batch"]
    n_batches = 16
    features, labels, size, distinct = make_batches(rows, batch_size, n_batches, config["ids"])
    fields = [
        tf_fm.CategoricalFeature(f"C{i + 1}", encoding="integer", num_ids=size)
        for i in range(N_CATEGORICAL)
    ]
    fields += [tf_fm.NumericFeature(f"I{i + 1}") for i in range(N_NUMERIC)]
    deep = config["model"] == "deepfm"
    keras.utils.set_random_seed(0)
    spe = config.get("steps_per_execution", 1)
    if config["setup"] == "tf_fm":
        build = tf_fm.DeepFM if deep else tf_fm.FM
        model = tf_fm.compile_model(
            build(fields, embedding_dim=EMBEDDING_DIM), metrics=False, steps_per_execution=spe
        )
    else:
        model = stock_model(fields, deep, spe)

    # Slices of whole batches: every step's input is a ready batch from the
    # first step on. (Batching example by example, even behind `.cache()`,
    # costs about 0.2 s per batch of 4096 until the cache is full, which
    # would land in the timed steps.)
    def by_batch(x):
        return x.reshape((n_batches, batch_size) + x.shape[1:])

    data = tf.data.Dataset.from_tensor_slices(
        ({k: by_batch(v) for k, v in features.items()}, by_batch(labels))
    ).repeat()

    times, ends = [], []  # per callback: time, index of the last step it covers

    class Clock(keras.callbacks.Callback):
        # With steps_per_execution > 1 Keras calls this once per execution.
        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter())
            ends.append(batch)
            warm = config["warmup"]
            if len(times) > warm + 2 and times[-1] - times[warm] > config["seconds"]:
                self.model.stop_training = True

    max_steps = config["max_steps"] * spe
    model.fit(data, steps_per_epoch=max_steps, epochs=1, verbose=0, callbacks=[Clock()])
    warm = config["warmup"]
    steps = ends[-1] - ends[warm]
    step_time = (times[-1] - times[warm]) / steps
    table = [w for w in model.trainable_weights if len(w.shape) == 2 and w.shape[0] >= rows // 2]
    table_bytes = sum(int(np.prod(w.shape)) * 4 for w in table)
    slot_bytes = 0
    for v in model.optimizer.variables:
        if len(v.shape) == 2 and v.shape[0] >= rows // 2:
            slot_bytes += int(np.prod(v.shape)) * 4
    return {
        **config,
        "steps": steps,
        "step_ms": step_time * 1000,
        "examples_per_s": batch_size / step_time,
        "distinct_rows_per_batch": float(distinct),
        "peak_rss_gb": peak_rss_bytes() / 2**30,
        "table_gb": table_bytes / 2**30,
        "slots_per_table": slot_bytes / table_bytes if table_bytes else 0.0,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", nargs="+", type=float, default=[1e4, 1e6, 2.6e7])
    parser.add_argument("--batch", nargs="+", type=int, default=[1024, 4096])
    parser.add_argument("--models", nargs="+", default=["fm", "deepfm"])
    parser.add_argument("--setups", nargs="+", default=["tf_fm", "stock"])
    parser.add_argument("--ids", default="zipf", choices=["zipf", "uniform"])
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per run")
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=1,
        help="model.compile(steps_per_execution=...) for both setups (Keras' default is 1)",
    )
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return

    results = []
    for model in args.models:
        for batch in args.batch:
            for rows in args.rows:
                for setup in args.setups:
                    config = {
                        "model": model,
                        "batch": batch,
                        "rows": rows,
                        "setup": setup,
                        "ids": args.ids,
                        "warmup": 2,
                        "seconds": args.seconds,
                        "max_steps": 400,
                        "steps_per_execution": args.steps_per_execution,
                    }
                    proc = subprocess.run(
                        [sys.executable, __file__, "--one", json.dumps(config)],
                        capture_output=True,
                        text=True,
                    )
                    if proc.returncode != 0:
                        print(proc.stderr[-3000:], file=sys.stderr)
                        raise SystemExit(f"run failed: {config}")
                    result = json.loads(proc.stdout.strip().splitlines()[-1])
                    results.append(result)
                    print(
                        f"{model:7s} batch {batch:5d} rows {rows:9.2g} {setup:6s} "
                        f"{result['examples_per_s']:10,.0f} ex/s  "
                        f"step {result['step_ms']:8.1f} ms  "
                        f"peak {result['peak_rss_gb']:.2f} GB",
                        flush=True,
                    )
    table = markdown(results, args.ids, args.steps_per_execution)
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


def markdown(results, ids, steps_per_execution=1):
    lines = [
        f"ids: {ids}; steps_per_execution: {steps_per_execution}; examples/s (step ms); "
        "peak RSS of the process; optimizer slot memory per table (tf_fm: LazyAdam m and v).",
        "",
        "| model | batch | table rows | distinct rows / batch | tf_fm ex/s (ms) "
        "| stock Keras ex/s (ms) | tf_fm / stock | tf_fm peak GB | stock peak GB "
        "| tf_fm slots / table |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keyed = {(r["model"], r["batch"], r["rows"], r["setup"]): r for r in results}

    def cell(x, key, fmt):
        return fmt.format(x[key]) if x else "-"

    for (model, batch, rows, setup), r in keyed.items():
        if setup != "tf_fm":
            continue
        s = keyed.get((model, batch, rows, "stock"))
        cells = [
            model,
            str(batch),
            f"{rows:.2g}",
            f"{r['distinct_rows_per_batch']:,.0f}",
            f"{r['examples_per_s']:,.0f} ({r['step_ms']:.1f})",
            f"{s['examples_per_s']:,.0f} ({s['step_ms']:.1f})" if s else "-",
            f"{r['examples_per_s'] / s['examples_per_s']:.1f}x" if s else "-",
            f"{r['peak_rss_gb']:.2f}",
            cell(s, "peak_rss_gb", "{:.2f}"),
            f"{r['slots_per_table']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
