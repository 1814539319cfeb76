"""The FM family side by side: test AUC / log loss of every model with `tf_fm.train` defaults.

Each model of `tf_fm.training.MODELS` (FM, DeepFM, HOFM, FwFM, FFM, NFM) is
trained by the run API exactly as `tf-fm train --model M` trains it (schema
inference, the default model options and the default training loop: up to
100 epochs, early stopping on validation AUC, LR x0.1 on plateau, best
weights restored) on fixed train / dev / test files of the real samples in
`../shared/data`, several seeds each, in one run; test metrics are exact
(`Run.evaluate`). Nothing is tuned per model or per dataset.

Datasets (see `../shared/data/README.md`):

* `criteo`: criteo_widresdnn_sample, raw Criteo (format `criteo`), 7,200 /
  409 / 391 rows.
* `avazu`: avazu_widresdnn_sample (format `avazu`), 8,087 / 479 / 432 rows.
* `criteo_tiny`: criteo_tiny_deeplight (CSV, 13 numeric + 26 integer-id
  columns, a header added), 9,000 / 1,000 (the last train rows) / 10,000.
* `movielens`: ml-latest-small, rating >= 4 as click; `userId`, `movieId`,
  `genres` (multi-valued, `|`); a fixed random 80/10/10 split (seed 0) of
  the 100,836 ratings.

The split files are written to a temporary directory (the samples are read
from `../shared/data`, never copied into the repository).

Usage:
    python benchmarks/quality.py                              # all, 3 seeds
    python benchmarks/quality.py --datasets criteo --models fm deepfm --seeds 0
    python benchmarks/quality.py --out benchmarks/quality.md --json /tmp/quality.jsonl
    python benchmarks/quality.py --summarize /tmp/quality.jsonl   # the table of earlier runs
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

DATA = os.environ.get(
    "TF_FM_SHARED_DATA",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"),
)
DATASETS = ("criteo", "avazu", "criteo_tiny", "movielens")
MODELS = ("fm", "deepfm", "hofm", "fwfm", "ffm", "nfm")


# --- Data: (format, train files, dev files, test files, train options) --------


def _criteo(root, work):
    root = os.path.join(root, "criteo_widresdnn_sample")
    files = [os.path.join(root, f"{s}.csv") for s in ("train", "dev", "test")]
    return "criteo", *([f] for f in files), {}


def _avazu(root, work):
    root = os.path.join(root, "avazu_widresdnn_sample")
    files = [os.path.join(root, f"{s}.csv") for s in ("train", "dev", "test")]
    return "avazu", *([f] for f in files), {}


def _criteo_tiny(root, work):
    root = os.path.join(root, "criteo_tiny_deeplight")
    header = ",".join(["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))])
    with open(os.path.join(root, "tiny_train_input.csv")) as f:
        train = f.read().splitlines()
    with open(os.path.join(root, "tiny_test_input.csv")) as f:
        test = f.read().splitlines()
    paths = []
    for name, lines in (("train", train[:9000]), ("dev", train[9000:]), ("test", test)):
        paths.append(os.path.join(work, f"criteo_tiny_{name}.csv"))
        with open(paths[-1], "w") as f:
            f.write("\n".join([header, *lines]) + "\n")
    return "csv", *([p] for p in paths), {"label": "label"}


def _movielens(root, work):
    import numpy as np
    import pandas as pd

    root = os.path.join(root, "ml-latest-small")
    ratings = pd.read_csv(os.path.join(root, "ratings.csv"))
    movies = pd.read_csv(os.path.join(root, "movies.csv"))
    frame = ratings.merge(movies[["movieId", "genres"]], on="movieId", how="left")
    frame["label"] = (frame["rating"] >= 4).astype(int)
    frame["genres"] = frame["genres"].fillna("")
    frame = frame[["label", "userId", "movieId", "genres"]]
    order = np.random.default_rng(0).permutation(len(frame))
    n_train, n_dev = int(0.8 * len(frame)), int(0.1 * len(frame))
    paths = []
    for name, idx in zip(
        ("train", "dev", "test"), np.split(order, [n_train, n_train + n_dev]), strict=True
    ):
        paths.append(os.path.join(work, f"movielens_{name}.csv"))
        frame.iloc[idx].to_csv(paths[-1], index=False)
    return "csv", *([p] for p in paths), {"label": "label", "separator": "|"}


LOADERS = {"criteo": _criteo, "avazu": _avazu, "criteo_tiny": _criteo_tiny, "movielens": _movielens}


# --- One run ------------------------------------------------------------------


def run_one(dataset, data, model, seed, work):
    """Trains `model` with defaults on `data`; its test metrics, epochs and seconds."""
    import keras

    import tf_fm

    fmt, train, dev, test, options = data
    keras.backend.clear_session()
    start = time.perf_counter()
    run = tf_fm.train(
        train,
        format=fmt,
        valid=dev,
        output=os.path.join(work, f"{dataset}_{model}_{seed}"),
        model=model,
        seed=seed,
        log=lambda line: None,
        verbose=0,
        **options,
    )
    seconds = time.perf_counter() - start
    metrics = run.evaluate(test).scores
    return {
        "dataset": dataset,
        "model": model,
        "seed": seed,
        "auc": metrics["auc"],
        "logloss": metrics["logloss"],
        "epochs": len(run.history.get("loss", [])),
        "seconds": seconds,
    }


# --- Table --------------------------------------------------------------------


def _mean_std(values):
    import numpy as np

    values = np.asarray(values, dtype=float)
    return f"{values.mean():.4f} ± {values.std():.4f}"


def table(results, models, datasets):
    """Markdown: one row per (dataset, model), mean ± std over seeds."""
    lines = [
        "| dataset | model | test AUC | test log loss | epochs (per seed) | s / run |",
        "|---|---|---|---|---|---|",
    ]
    for dataset in datasets:
        for model in models:
            rows = [r for r in results if r["dataset"] == dataset and r["model"] == model]
            if not rows:
                continue
            epochs = ", ".join(str(r["epochs"]) for r in rows)
            seconds = sum(r["seconds"] for r in rows) / len(rows)
            auc = _mean_std([r["auc"] for r in rows])
            logloss = _mean_std([r["logloss"] for r in rows])
            lines.append(f"| {dataset} | {model} | {auc} | {logloss} | {epochs} | {seconds:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", help="write the markdown table here too")
    parser.add_argument("--json", help="append one JSON line per run here")
    parser.add_argument("--summarize", nargs="+", help="print the table of these JSON files")
    args = parser.parse_args(argv)
    if args.summarize:
        results = [json.loads(line) for path in args.summarize for line in open(path)]
        print(table(results, MODELS, DATASETS))
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not os.path.isdir(DATA):
        sys.exit(f"no data folder {DATA}: set TF_FM_SHARED_DATA")
    results = []
    with tempfile.TemporaryDirectory(prefix="tf_fm_quality_") as work:
        for dataset in args.datasets:
            data = LOADERS[dataset](DATA, work)
            # Seeds outermost, models alternating: the machine's drift spreads evenly.
            for seed in args.seeds:
                for model in args.models:
                    result = run_one(dataset, data, model, seed, work)
                    results.append(result)
                    print(json.dumps(result), flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(result) + "\n")
    import keras
    import tensorflow as tf

    header = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs; seeds {args.seeds}.\n\n"
    )
    text = header + table(results, args.models, args.datasets) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
