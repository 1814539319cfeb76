"""Probit Bayesian FM vs myfm vs the SGD FM on the iPinYou sample (binary CTR, libFM rows).

`../shared/data/ipinyou_deepctr_sample`: `train.fm.txt` (26,773 rows) and
`test.fm.txt` (21,150 rows), libFM `label idx:1 ...`, 16 one-hot fields, 0.5%
clicks. The model input is what `tf-fm train --format libsvm` reads: one
weighted multi-valued feature of the row's indices (`libsvm_feature`, the
indices of both files). Three models on the same inputs:

* `tf_fm.bayesian.BayesianFM(task="binary")`: the probit Gibbs chain;
* `myfm.MyFMGibbsClassifier` (the same sweeps and rank, one group, on the same
  sparse design) in its own venv (`--myfm-python`, see `bayesian.py`);
* `tf_fm.train(model="fm", format="libsvm")`: the SGD FM with the package's
  defaults, early-stopped on 10% of the training rows held out.

Usage:

    python benchmarks/bayesian_ipinyou.py --rank 8 --samples 100 --burn-in 20 --out table.md
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bayesian  # noqa: E402  (the shared runners: tf_fm's chain, myfm's, the scores)


def read(path, schema):
    """Model inputs (numpy) and labels of a libFM file, as the CLI reads it."""
    import tf_fm

    dataset = tf_fm.data.read_libsvm(path, max_length=schema.features[0].max_length)
    parts, labels = {}, []
    for features, label in dataset.as_numpy_iterator():
        for name, value in features.items():
            parts.setdefault(name, []).append(value)
        labels.append(label)
    return {k: np.concatenate(v) for k, v in parts.items()}, np.concatenate(labels).astype(float)


def run_sgd_fm(train_path, test_path, args, workdir):
    import tf_fm

    lines = pathlib.Path(train_path).read_text().splitlines()
    holdout = np.random.default_rng(1).random(len(lines)) < 0.1
    fit, valid = workdir / "fit.txt", workdir / "valid.txt"
    fit.write_text("\n".join(np.array(lines)[~holdout]) + "\n")
    valid.write_text("\n".join(np.array(lines)[holdout]) + "\n")
    start = time.perf_counter()
    run = tf_fm.train(
        str(fit),
        format="libsvm",
        valid=str(valid),
        output=workdir / "sgd_fm",
        model="fm",
        embedding_dim=args.rank,
        verbose=0,
        log=lambda line: None,
    )
    seconds = time.perf_counter() - start
    score = run.evaluate([str(test_path)]).scores
    return {
        "auc": float(score["auc"]),
        "logloss": float(score["logloss"]),
        "seconds": seconds,
        "epochs": run.metrics["epochs_run"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="ipinyou_deepctr_sample folder")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--burn-in", type=int, default=20)
    parser.add_argument("--myfm-python", default="/tmp/bayes_bench_venv/bin/python")
    parser.add_argument("--skip", nargs="*", default=[], choices=["myfm", "sgd"])
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    args.task = "binary"

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_fm

    repo = pathlib.Path(__file__).resolve().parents[1]
    folder = "ipinyou_deepctr_sample"
    data_dir = pathlib.Path(args.data or repo.parent / "shared" / "data" / folder)
    train_path, test_path = data_dir / "train.fm.txt", data_dir / "test.fm.txt"
    if not train_path.is_file():
        sys.exit(f"the iPinYou sample is not in {data_dir}")
    feature = tf_fm.data.libsvm_feature([str(train_path), str(test_path)])
    schema = tf_fm.FeatureSchema([feature])
    (train_x, train_y), (test_x, test_y) = read(train_path, schema), read(test_path, schema)
    results = {
        "tf_fm BayesianFM (MCMC, probit)": bayesian.run_bayesfm(
            schema, train_x, train_y, test_x, test_y, args
        )
    }
    print(results, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        if "myfm" not in args.skip:
            results["myfm 0.4 MyFMGibbsClassifier"] = bayesian.run_myfm(
                args.myfm_python, schema, train_x, train_y, test_x, test_y, args, workdir
            )
            print(results, flush=True)
        if "sgd" not in args.skip:
            results["tf_fm FM (SGD, tf_fm.train defaults)"] = run_sgd_fm(
                train_path, test_path, args, workdir
            )
    head = (
        f"iPinYou sample, {len(train_y):,} train / {len(test_y):,} test rows "
        f"({int(train_y.sum())} / {int(test_y.sum())} clicks); one libFM feature of "
        f"{feature.num_ids:,} ids; rank {args.rank}; MCMC: {args.burn_in} burn-in + "
        f"{args.samples} kept sweeps."
    )
    lines = bayesian.table(results, args, (len(train_y), len(test_y))).splitlines()
    text = "\n".join([head, *lines[1:]])
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
