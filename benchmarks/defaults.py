"""Training defaults vs published tuned configurations, on the real data samples.

Trains `tf_fm.DeepFM` and `tf_fm.FM` on the small real samples in
`../shared/data` (see its README) under several configurations, several seeds
each, on fixed train / dev / test splits, and reports test AUC and log loss
(mean and standard deviation over seeds), the epochs run and the seconds.

Configurations (DeepFM unless named fm_*):

* `a_defaults`: today's defaults (k=10, DNN 400-400-400 relu, dropout 0.5, no
  batch norm, `embeddings_l2 = linear_l2 = 1e-5`, `LazyAdam(1e-3)` through
  `tf_fm.compile_model`), a fixed number of epochs, no callbacks.
* single changes of `a_defaults`, trained the same way (fixed epochs):
  `a_dropout0.1`, `a_bn`, `a_l2_1e-4`, `a_l2_1e-3` (both `embeddings_l2`
  and `linear_l2`).
* `a_sched`: `a_defaults` + the BARS / FuxiCTR training loop: validation AUC
  monitored each epoch, learning rate x0.1 on every epoch without improvement
  (`ReduceLROnPlateau(factor=0.1, patience=1, min_lr=1e-6)`), stop after 2
  epochs without improvement (`EarlyStopping(patience=2)`), best weights
  restored.
* `b_criteo_x1`: BARS DeepFM_criteo_x1 tuned config as far as tf_fm exposes
  it: batch norm, dropout 0.1, 400-400-400, k=10, embedding L2 1e-5, Adam
  1e-3, the schedule above. `b_avazu_x1`: the same with dropout 0.3 (the
  Avazu_x1 tuned dropout; its embedding regularizer 0.1 is FuxiCTR's
  whole-table L2, see defaults.md for why it has no fixed per-example
  equivalent). `b_l2_1e-4`: `b_criteo_x1` with `embeddings_l2 = 1e-4`.
* the schedule with one more change: `a_sched_dropout0.1`, `a_sched_bn`,
  `a_sched_l2_1e-2`, `a_sched_l2_1e-1`.
* `a_sched_rowwise`, `fm_sched_rowwise`: `a_sched` / `fm_sched` with
  `compile_model(embedding_optimizer="rowwise_adagrad")` (the tables' rule).
* `fm_a`: FM with today's defaults, fixed epochs. `fm_sched`: + the schedule.
  `fm_sched_l2_1e-4`, `fm_sched_l2_1e-3`, `fm_sched_l2_1e-2`: stronger
  per-example L2.

Every run gets the same batch size (`--batch-size`, default 256: the BARS
batch of 4096 would be under 2 steps per epoch on 7,200 rows) and at most
`--epochs` epochs. Test metrics are computed exactly (scikit-learn) on the
weights the run ends with (the best dev epoch for the scheduled runs). For
the fixed-epoch runs the per-epoch test AUC is kept in the JSON output too.

Usage:
    python benchmarks/defaults.py                                  # all, 3 seeds
    python benchmarks/defaults.py --datasets criteo --configs a_defaults a_sched
    python benchmarks/defaults.py --json benchmarks/defaults.json
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

DATA = os.environ.get(
    "TF_FM_SHARED_DATA",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"),
)

DEFAULTS = dict(dnn_dropout=0.5, dnn_batch_norm=False, embeddings_l2=1e-5, linear_l2=1e-5)

CONFIGS = {
    "a_defaults": ("deepfm", {}, False),
    "a_sched": ("deepfm", {}, True),
    "a_dropout0.1": ("deepfm", {"dnn_dropout": 0.1}, False),
    "a_bn": ("deepfm", {"dnn_batch_norm": True}, False),
    "a_l2_1e-4": ("deepfm", {"embeddings_l2": 1e-4, "linear_l2": 1e-4}, False),
    "a_l2_1e-3": ("deepfm", {"embeddings_l2": 1e-3, "linear_l2": 1e-3}, False),
    "b_criteo_x1": ("deepfm", {"dnn_dropout": 0.1, "dnn_batch_norm": True}, True),
    "b_avazu_x1": ("deepfm", {"dnn_dropout": 0.3, "dnn_batch_norm": True}, True),
    "b_l2_1e-4": (
        "deepfm",
        {"dnn_dropout": 0.1, "dnn_batch_norm": True, "embeddings_l2": 1e-4, "linear_l2": 1e-4},
        True,
    ),
    "a_sched_dropout0.1": ("deepfm", {"dnn_dropout": 0.1}, True),
    "a_sched_bn": ("deepfm", {"dnn_batch_norm": True}, True),
    "a_sched_l2_1e-2": ("deepfm", {"embeddings_l2": 1e-2, "linear_l2": 1e-2}, True),
    "a_sched_l2_1e-1": ("deepfm", {"embeddings_l2": 1e-1, "linear_l2": 1e-1}, True),
    "fm_a": ("fm", {}, False),
    "fm_sched": ("fm", {}, True),
    "fm_sched_l2_1e-4": ("fm", {"embeddings_l2": 1e-4, "linear_l2": 1e-4}, True),
    "fm_sched_l2_1e-3": ("fm", {"embeddings_l2": 1e-3, "linear_l2": 1e-3}, True),
    "fm_sched_l2_1e-2": ("fm", {"embeddings_l2": 1e-2, "linear_l2": 1e-2}, True),
    # The tables' rule: TorchRec / FBGEMM's row-wise Adagrad instead of LazyAdam.
    "a_sched_rowwise": ("deepfm", {"embedding_optimizer": "rowwise_adagrad"}, True),
    "fm_sched_rowwise": ("fm", {"embedding_optimizer": "rowwise_adagrad"}, True),
}

DATASETS = ("criteo", "avazu", "criteo_tiny", "movielens")
MIN_COUNT = 2  # ids seen once in train go to the OOV bucket


# --- Data -------------------------------------------------------------------


def _numpy(dataset):
    """Concatenates a batched `(features, label)` dataset into numpy arrays."""
    import numpy as np

    xs, ys = [], []
    for x, y in dataset.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}, np.concatenate(ys)


def _schema_and_arrays(schema, train, dev, test):
    schema.adapt(train)
    return [_numpy(schema.preprocess(d)) for d in (train, dev, test)]


def load(name):
    """Returns (schema, (x, y) train, dev, test) as preprocessed numpy arrays."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    import tf_fm
    from tf_fm.data import read_avazu, read_criteo, read_csv, read_dataframe

    if name == "criteo":
        root = os.path.join(DATA, "criteo_widresdnn_sample")
        parts = [read_criteo(os.path.join(root, f"{s}.csv")) for s in ("train", "dev", "test")]
        features = [
            tf_fm.NumericFeature(f"I{i}", transform="log1p", default=0.0) for i in range(1, 14)
        ] + [tf_fm.CategoricalFeature(f"C{i}", min_count=MIN_COUNT) for i in range(1, 27)]
        schema = tf_fm.FeatureSchema(features, label="label")
        return schema, _schema_and_arrays(schema, *parts)
    if name == "avazu":
        root = os.path.join(DATA, "avazu_widresdnn_sample")
        parts = [read_avazu(os.path.join(root, "train.csv"))] + [
            read_avazu(os.path.join(root, f"{s}.csv"), header=False) for s in ("dev", "test")
        ]
        names = [n for n in parts[0].element_spec[0]]
        schema = tf_fm.FeatureSchema(
            [tf_fm.CategoricalFeature(n, min_count=MIN_COUNT) for n in names], label="click"
        )
        return schema, _schema_and_arrays(schema, *parts)
    if name == "criteo_tiny":
        # 10,000 train / 10,000 test, already integer ids; dev = last 1,000 train rows.
        root = os.path.join(DATA, "criteo_tiny_deeplight")
        numeric = [f"I{i}" for i in range(1, 14)]
        categorical = [f"C{i}" for i in range(1, 27)]
        columns = ["label", *numeric, *categorical]
        types = {**dict.fromkeys(numeric, "float"), **dict.fromkeys(categorical, "string")}

        def read(file):
            return read_csv(
                os.path.join(root, file), label="label", column_names=columns, column_types=types
            )

        full = read("tiny_train_input.csv").unbatch()
        train = full.take(9000).batch(1024)
        dev = full.skip(9000).batch(1024)
        test = read("tiny_test_input.csv")
        features = [tf_fm.NumericFeature(n, transform="log1p", default=0.0) for n in numeric] + [
            tf_fm.CategoricalFeature(n, min_count=MIN_COUNT) for n in categorical
        ]
        schema = tf_fm.FeatureSchema(features, label="label")
        return schema, _schema_and_arrays(schema, train, dev, test)
    if name == "movielens":
        # rating >= 4 as click; userId, movieId, genres (multi-valued); a fixed
        # random 80/10/10 split of the ratings (seed 0).
        root = os.path.join(DATA, "ml-latest-small")
        ratings = pd.read_csv(os.path.join(root, "ratings.csv"))
        movies = pd.read_csv(os.path.join(root, "movies.csv"))
        frame = ratings.merge(movies[["movieId", "genres"]], on="movieId", how="left")
        frame["click"] = (frame["rating"] >= 4).astype("float32")
        frame["userId"] = frame["userId"].astype(str)
        frame["movieId"] = frame["movieId"].astype(str)
        frame["genres"] = frame["genres"].fillna("")
        frame = frame[["userId", "movieId", "genres", "click"]]
        order = np.random.default_rng(0).permutation(len(frame))
        n_train, n_dev = int(0.8 * len(frame)), int(0.1 * len(frame))
        splits = np.split(order, [n_train, n_train + n_dev])
        parts = [read_dataframe(frame.iloc[idx], label="click", batch_size=1024) for idx in splits]
        schema = tf_fm.FeatureSchema(
            [
                tf_fm.CategoricalFeature("userId", min_count=MIN_COUNT),
                tf_fm.CategoricalFeature("movieId", min_count=MIN_COUNT),
                tf_fm.MultiValuedFeature("genres", separator="|", min_count=MIN_COUNT),
            ],
            label="click",
        )
        del tf
        return schema, _schema_and_arrays(schema, *parts)
    raise ValueError(f"Unknown dataset {name!r}; one of {DATASETS}")


# --- One run ----------------------------------------------------------------


def run_one(dataset, data, config, seed, epochs, batch_size):
    import keras
    import numpy as np
    from sklearn.metrics import log_loss, roc_auc_score

    import tf_fm

    schema, ((x_tr, y_tr), (x_dev, y_dev), (x_te, y_te)) = data
    kind, overrides, scheduled = CONFIGS[config]
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    kwargs = {**DEFAULTS, **overrides}
    embedding_optimizer = kwargs.pop("embedding_optimizer", "lazy_adam")
    if kind == "fm":
        kwargs = {k: v for k, v in kwargs.items() if k in ("embeddings_l2", "linear_l2")}
        model = tf_fm.FM(schema, **kwargs)
    else:
        model = tf_fm.DeepFM(schema, **kwargs)
    tf_fm.compile_model(model, learning_rate=1e-3, embedding_optimizer=embedding_optimizer)

    test_auc_per_epoch, lr_per_epoch = [], []

    class Track(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            p = self.model.predict(x_te, batch_size=4096, verbose=0).reshape(-1)
            test_auc_per_epoch.append(float(roc_auc_score(y_te, p)))
            lr_per_epoch.append(
                float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            )

    callbacks = [Track()]
    stopper = None
    if scheduled:
        # FuxiCTR BaseModel: every epoch without a better val AUC -> lr x0.1
        # (min 1e-6); 2 in a row -> stop; the best checkpoint is reloaded.
        stopper = keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=2, min_delta=1e-6, restore_best_weights=True
        )
        callbacks += [
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_auc", mode="max", factor=0.1, patience=1, min_lr=1e-6, min_delta=1e-6
            ),
            stopper,
        ]
    start = time.perf_counter()
    history = model.fit(
        x_tr,
        y_tr,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_dev, y_dev),
        callbacks=callbacks,
        shuffle=True,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    p = np.clip(model.predict(x_te, batch_size=4096, verbose=0).reshape(-1), 1e-7, 1 - 1e-7)
    p_dev = np.clip(model.predict(x_dev, batch_size=4096, verbose=0).reshape(-1), 1e-7, 1 - 1e-7)
    return {
        "dataset": dataset,
        "config": config,
        "seed": seed,
        "test_auc": float(roc_auc_score(y_te, p)),
        "test_logloss": float(log_loss(y_te, p, labels=[0, 1])),
        "dev_auc": float(roc_auc_score(y_dev, p_dev)),
        "epochs_run": len(history.history["loss"]),
        "best_epoch": (stopper.best_epoch + 1) if stopper is not None else None,
        "seconds": seconds,
        "val_auc_per_epoch": [float(v) for v in history.history["val_auc"]],
        "test_auc_per_epoch": test_auc_per_epoch,
        "lr_per_epoch": lr_per_epoch,
        "train_loss_per_epoch": [float(v) for v in history.history["loss"]],
        "rows": [len(y_tr), len(y_dev), len(y_te)],
        "positives": [float(y_tr.mean()), float(y_dev.mean()), float(y_te.mean())],
    }


# --- Driver -----------------------------------------------------------------


def summarize(results):
    import numpy as np

    rows = []
    keys = sorted({(r["dataset"], r["config"]) for r in results}, key=lambda k: (k[0], k[1]))
    order = {c: i for i, c in enumerate(CONFIGS)}
    keys.sort(key=lambda k: (DATASETS.index(k[0]), order[k[1]]))
    for dataset, config in keys:
        runs = [r for r in results if r["dataset"] == dataset and r["config"] == config]
        auc = np.array([r["test_auc"] for r in runs])
        ll = np.array([r["test_logloss"] for r in runs])
        rows.append(
            {
                "dataset": dataset,
                "config": config,
                "seeds": len(runs),
                "auc_mean": float(auc.mean()),
                "auc_std": float(auc.std(ddof=1)) if len(runs) > 1 else 0.0,
                "logloss_mean": float(ll.mean()),
                "logloss_std": float(ll.std(ddof=1)) if len(runs) > 1 else 0.0,
                "epochs": [r["epochs_run"] for r in runs],
                "seconds_mean": float(np.mean([r["seconds"] for r in runs])),
            }
        )
    return rows


def markdown(rows):
    lines = [
        "| dataset | config | test AUC (mean ± std) | test logloss (mean ± std) "
        "| epochs run (per seed) | s / run |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['config']} | {r['auc_mean']:.4f} ± {r['auc_std']:.4f} "
            f"| {r['logloss_mean']:.4f} ± {r['logloss_std']:.4f} "
            f"| {', '.join(map(str, r['epochs']))} | {r['seconds_mean']:.1f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["criteo", "avazu", "criteo_tiny"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="maximum (and fixed) epochs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="TF intra/inter-op threads")
    parser.add_argument("--json", default=None, help="append raw results (JSON lines) here")
    parser.add_argument(
        "--summarize", default=None, help="only print the table of a --json file of earlier runs"
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one dataset
    args = parser.parse_args()

    if args.one:
        # Internal: one dataset, loaded once, every config x seed in turn.
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        data = load(args.one)
        for config in args.configs:
            for seed in args.seeds:
                result = run_one(args.one, data, config, seed, args.epochs, args.batch_size)
                print("RESULT " + json.dumps(result), flush=True)
        return

    if args.summarize:
        with open(args.summarize) as f:
            results = [json.loads(line) for line in f if line.strip()]
        print(markdown(summarize(results)))
        return

    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {platform.node()} python {sys.version.split()[0]}"
    )
    print(f"# load at start: {os.getloadavg()}", flush=True)
    results = []
    for dataset in args.datasets:
        # One subprocess per dataset: data loaded once, a fresh TF runtime per
        # dataset; runs inside it are separated by keras.backend.clear_session.
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--one",
            dataset,
            "--configs",
            *args.configs,
            "--seeds",
            *map(str, args.seeds),
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
        ]
        errors = tempfile.TemporaryFile(mode="w+")  # TF logs a lot: not a pipe, it could fill
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True)
        for line in proc.stdout:
            if not line.startswith("RESULT "):
                continue
            result = json.loads(line[len("RESULT ") :])
            results.append(result)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(result) + "\n")
            print(
                f"{dataset:12s} {result['config']:18s} seed={result['seed']} "
                f"auc={result['test_auc']:.4f} logloss={result['test_logloss']:.4f} "
                f"epochs={result['epochs_run']} best={result['best_epoch']} "
                f"{result['seconds']:.1f}s",
                flush=True,
            )
        if proc.wait() != 0:
            errors.seek(0)
            print(f"FAILED {dataset}:\n{errors.read()[-3000:]}", flush=True)
        errors.close()
    print(f"# load at end: {os.getloadavg()}")
    print(markdown(summarize(results)))


if __name__ == "__main__":
    main()
