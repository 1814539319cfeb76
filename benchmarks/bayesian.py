"""Bayesian FM (MCMC) vs myfm vs the SGD-trained FM on ml-latest-small ratings.

One random 80/20 split of `../shared/data/ml-latest-small/ratings.csv` (seed 0),
fields user, movie (categorical, a vocabulary learned on the training rows) and
the movie's genres (multi-valued); target the rating (`--task regression`) or
whether it is >= 4 (`--task binary`, the probit chain; the MovieLens task of
`quality.py`). Three models on the same split and the same model inputs:

* `tf_fm.bayesian.BayesianFM`: `burn_in` + `samples` Gibbs sweeps, rank k;
* `myfm.MyFMGibbsRegressor` / `MyFMGibbsClassifier` (the same sweeps, rank and
  per-field groups, on the same one-hot / multi-hot design), run in its own venv
  (`--myfm-python`; never a tf_fm dependency): `python -m venv
  /tmp/bayes_bench_venv && /tmp/bayes_bench_venv/bin/pip install myfm`;
* `tf_fm.train(model="fm")`: the SGD FM with the package's defaults (LazyAdam,
  early stopping); it holds out 10% of the training rows as its validation set
  for early stopping.

Timing: the fit seconds (tf_fm's include building the exported Keras model,
about 1 s), fit / sweeps, and the median time between the ends of two
consecutive sweeps (stamped by tf_fm's `log` and myfm's `callback`): the sweep
alone, robust to a busy machine; tf_fm's includes its per-sweep history
metrics and leaves out the cache recomputation of every `REFRESH_EVERY`-th sweep.

Usage:

    python benchmarks/bayesian.py --rank 10 --samples 100 --burn-in 20 --out table.md
    python benchmarks/bayesian.py --task binary --out binary.md

The child mode (`--myfm-child DATA.npz OUT.json`) is what runs in myfm's venv: it
imports numpy, scipy and myfm only.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np


def load_split(data_dir, seed=0, test_fraction=0.2):
    """(train, test) pandas frames with user, movie, genres, rating."""
    import pandas as pd

    ratings = pd.read_csv(data_dir / "ratings.csv")
    movies = pd.read_csv(data_dir / "movies.csv")
    frame = ratings.merge(movies[["movieId", "genres"]], on="movieId", how="left")
    frame = frame.rename(columns={"userId": "user", "movieId": "movie"})
    frame = frame[["user", "movie", "genres", "rating"]]
    test = np.random.default_rng(seed).random(len(frame)) < test_fraction
    return frame[~test].reset_index(drop=True), frame[test].reset_index(drop=True)


def schema_of(train):
    """The FeatureSchema of the three fields, adapted on the training rows."""
    import tensorflow as tf

    from tf_fm import CategoricalFeature, FeatureSchema, MultiValuedFeature

    schema = FeatureSchema(
        [
            CategoricalFeature("user"),  # ids as text: the csv files of the SGD FM are text
            CategoricalFeature("movie"),
            MultiValuedFeature("genres", separator="|"),
        ],
        label="rating",
    )
    schema.adapt(tf.data.Dataset.from_tensor_slices(raw_columns(train)).batch(8192))
    return schema


def raw_columns(frame):
    return {
        "user": frame["user"].astype(str).to_numpy(str),
        "movie": frame["movie"].astype(str).to_numpy(str),
        "genres": frame["genres"].to_numpy(str),
    }


def model_inputs(schema, frame):
    """The preprocessed model inputs (ids) of a frame, numpy."""
    preprocessor = schema.preprocessor()
    return {k: np.asarray(v) for k, v in preprocessor(raw_columns(frame)).items()}


def scores(task, labels, predictions):
    from tf_fm import metrics

    if task == "regression":
        return {"rmse": metrics.rmse(labels, predictions)}
    return {
        "auc": metrics.roc_auc(labels, predictions),
        "logloss": metrics.log_loss(labels, predictions),
    }


def run_bayesfm(schema, train_x, train_y, test_x, test_y, args):
    from tf_fm.bayesian import BayesianFM

    bfm = BayesianFM(
        schema,
        embedding_dim=args.rank,
        samples=args.samples,
        burn_in=args.burn_in,
        seed=args.seed,
        task=args.task,
    )
    stamps = []  # the end of each sweep
    start = time.perf_counter()
    model = bfm.fit(
        train_x, train_y, log=lambda line: stamps.append(time.perf_counter()), log_every=1
    )
    seconds = time.perf_counter() - start
    prediction = model.predict(test_x, batch_size=8192, verbose=0).reshape(-1)
    sweeps = args.burn_in + args.samples
    timing = {"seconds": seconds, "sweeps": sweeps, "sweep_ms": median_ms(stamps)}
    return {**scores(args.task, test_y, prediction), **timing}


def median_ms(stamps):
    """Median milliseconds between consecutive time stamps (robust to a busy machine)."""
    return 1000 * float(np.median(np.diff(stamps)))


def design_arrays(schema, inputs):
    """CSR parts of the one-hot / multi-hot design of the schema's fields, column offsets.

    A categorical field is one column per id; a multi-valued field one per id
    of its rows (padding left out), valued by its weights when it has them.
    """
    fields = schema.fields()
    sizes = [f["vocabulary_size"] for f in fields]
    offsets = np.cumsum([0, *sizes[:-1]])
    n = len(inputs[fields[0]["name"]])
    columns, values = [], []
    for field, offset in zip(fields, offsets, strict=True):
        ids = np.asarray(inputs[field["name"]]).reshape(n, -1)
        columns.append(np.where(ids >= 0, ids + offset, -1))
        weights = inputs.get(f"{field['name']}_weights")
        values.append(np.ones(ids.shape) if weights is None else np.asarray(weights))
    ids, values = np.concatenate(columns, axis=1), np.concatenate(values, axis=1)
    mask = ids >= 0
    return {
        "indices": ids[mask],
        "values": values[mask].astype(np.float64),
        "indptr": np.concatenate([[0], np.cumsum(mask.sum(axis=1))]),
        "shape": np.array([n, sum(sizes)]),
        "group_shapes": np.array(sizes),
    }


def run_myfm(python, schema, train_x, train_y, test_x, test_y, args, workdir):
    data = workdir / "myfm_data.npz"
    train, test = design_arrays(schema, train_x), design_arrays(schema, test_x)
    np.savez(
        data,
        **{f"train_{k}": v for k, v in train.items()},
        **{f"test_{k}": v for k, v in test.items()},
        train_y=train_y,
        test_y=test_y,
        rank=args.rank,
        n_iter=args.burn_in + args.samples,
        n_kept=args.samples,
        seed=args.seed,
        binary=args.task == "binary",
    )
    out = workdir / "myfm.json"
    subprocess.run([python, __file__, "--myfm-child", str(data), str(out)], check=True)
    result = json.loads(out.read_text())
    prediction = np.load(workdir / "myfm_prediction.npy")
    return {**scores(args.task, test_y, prediction), **result}


def myfm_child(data_path, out_path):
    """In myfm's venv: fit MyFMGibbsRegressor / Classifier on the saved design.

    Writes the fit time (OUT) and the test predictions (`myfm_prediction.npy`
    beside it: ratings, or probabilities).
    """
    import myfm
    import scipy.sparse as sps

    data = np.load(data_path)

    def matrix(prefix):
        indices = data[f"{prefix}_indices"]
        return sps.csr_matrix(
            (data[f"{prefix}_values"], indices, data[f"{prefix}_indptr"]),
            shape=tuple(data[f"{prefix}_shape"]),
        )

    x_train, x_test = matrix("train"), matrix("test")
    binary = bool(data["binary"])
    learner = myfm.MyFMGibbsClassifier if binary else myfm.MyFMGibbsRegressor
    model = learner(rank=int(data["rank"]), random_seed=int(data["seed"]))
    stamps = []  # the end of each sweep

    def callback(i, fm, hyper, history):
        stamps.append(time.perf_counter())
        return False, None  # go on, no status line

    start = time.perf_counter()
    model.fit(
        x_train,
        data["train_y"],
        n_iter=int(data["n_iter"]),
        n_kept_samples=int(data["n_kept"]),
        group_shapes=[int(s) for s in data["train_group_shapes"]],
        callback=callback,
    )
    seconds = time.perf_counter() - start
    prediction = model.predict_proba(x_test) if binary else model.predict(x_test)
    np.save(pathlib.Path(out_path).parent / "myfm_prediction.npy", prediction)
    result = {"seconds": seconds, "sweeps": int(data["n_iter"]), "sweep_ms": median_ms(stamps)}
    pathlib.Path(out_path).write_text(json.dumps(result))


def run_sgd_fm(schema, train, test, args, workdir):
    """tf_fm.train(model="fm") on CSV files of the same split (label: the target)."""
    import tf_fm

    holdout = np.random.default_rng(1).random(len(train)) < 0.1
    paths = {}
    for name, frame in (("train", train[~holdout]), ("valid", train[holdout]), ("test", test)):
        paths[name] = workdir / f"{name}.csv"
        frame.assign(label=target(frame, args.task)).drop(columns="rating").to_csv(
            paths[name], index=False
        )
    start = time.perf_counter()
    run = tf_fm.train(
        str(paths["train"]),
        format="csv",
        valid=str(paths["valid"]),
        output=workdir / "sgd_fm",
        schema=schema,
        task=args.task,
        label="label",
        separator="|",
        model="fm",
        embedding_dim=args.rank,
        verbose=0,
        log=lambda line: None,
    )
    seconds = time.perf_counter() - start
    score = run.evaluate([str(paths["test"])]).scores
    chosen = {k: float(score[k]) for k in scores(args.task, [0, 1], [0.4, 0.6])}
    return {**chosen, "seconds": seconds, "epochs": run.metrics["epochs_run"]}


def target(frame, task):
    """The rating, or whether it is >= 4 (1.0 / 0.0)."""
    rating = frame["rating"].to_numpy(np.float64)
    return rating if task == "regression" else (rating >= 4).astype(np.float64)


def table(results, args, rows):
    what = "the rating" if args.task == "regression" else "rating >= 4 (probit for MCMC)"
    names = ["test RMSE"] if args.task == "regression" else ["test AUC", "test log loss"]
    keys = ["rmse"] if args.task == "regression" else ["auc", "logloss"]
    lines = [
        f"ml-latest-small, {rows[0]:,} train / {rows[1]:,} test ratings (random 80/20, seed 0); "
        f"fields user, movie, genres; target {what}; rank {args.rank}; MCMC: "
        f"{args.burn_in} burn-in + {args.samples} kept sweeps.",
        "",
        f"| model | {' | '.join(names)} | fit seconds | fit / sweeps (ms) | median sweep (ms) |",
        "|---|" + "---|" * (len(names) + 3),
    ]
    for name, result in results.items():
        per = f"{1000 * result['seconds'] / result['sweeps']:.0f}" if "sweeps" in result else "-"
        sweep = f"{result['sweep_ms']:.0f}" if "sweep_ms" in result else "-"
        extra = f" ({result['epochs']} epochs)" if "epochs" in result else ""
        values = " | ".join(f"{result[k]:.4f}" for k in keys)
        lines.append(f"| {name} | {values} | {result['seconds']:.1f}{extra} | {per} | {sweep} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="ml-latest-small folder")
    parser.add_argument("--task", choices=["regression", "binary"], default="regression")
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--burn-in", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="both chains' seed")
    parser.add_argument("--myfm-python", default="/tmp/bayes_bench_venv/bin/python")
    parser.add_argument("--skip", nargs="*", default=[], choices=["myfm", "sgd"])
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--myfm-child", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.myfm_child:
        return myfm_child(*args.myfm_child)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    repo = pathlib.Path(__file__).resolve().parents[1]
    data_dir = pathlib.Path(args.data or repo.parent / "shared" / "data" / "ml-latest-small")
    if not (data_dir / "ratings.csv").is_file():
        sys.exit(f"ml-latest-small not found in {data_dir}")
    train, test = load_split(data_dir)
    schema = schema_of(train)
    train_x, test_x = model_inputs(schema, train), model_inputs(schema, test)
    train_y, test_y = target(train, args.task), target(test, args.task)
    results = {
        "tf_fm BayesianFM (MCMC)": run_bayesfm(schema, train_x, train_y, test_x, test_y, args)
    }
    print(results, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        if "myfm" not in args.skip:
            learner = "Regressor" if args.task == "regression" else "Classifier"
            results[f"myfm 0.4 MyFMGibbs{learner}"] = run_myfm(
                args.myfm_python, schema, train_x, train_y, test_x, test_y, args, workdir
            )
            print(results, flush=True)
        if "sgd" not in args.skip:
            results["tf_fm FM (SGD, tf_fm.train defaults)"] = run_sgd_fm(
                schema, train, test, args, workdir
            )
    text = table(results, args, (len(train), len(test)))
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
