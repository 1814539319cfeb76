"""`tf-fm demo`: FM and DeepFM on synthetic data with a known truth, exported for TF Serving.

The data come from a ground-truth FM (`tf_fm.data.make_fm_data`), so the
best achievable test AUC / logloss (the true probabilities') is known and
printed next to each model's. DeepFM is then exported to
`<export_dir>/<version>` and verified in a process that imports TensorFlow
but not tf_fm, and the plots (training curves, ROC, calibration) are written
as PNG files.
"""

import dataclasses
import pathlib
import time

import keras

import tf_fm
from tf_fm import cli
from tf_fm import plots as plots_lib

TEST_ROWS = 20_000
BATCH_SIZE = 512
LEARNING_RATE = 3e-3


def _rows(data, index):
    """The rows `index` of a `SyntheticData`."""
    return dataclasses.replace(
        data,
        features={k: v[index] for k, v in data.features.items()},
        labels=data.labels[index],
        truth=data.truth[index],
    )


def run(args):
    """Runs the demo; `args` has export_dir, plots, rows, epochs, seed. Returns 0."""
    start = time.monotonic()
    keras.utils.set_random_seed(args.seed)
    n_valid = max(args.rows // 5, 1_000)
    data, test = tf_fm.data.make_fm_data(
        n_train=args.rows + n_valid, n_test=TEST_ROWS, seed=args.seed
    )
    train, valid = _rows(data, slice(0, args.rows)), _rows(data, slice(args.rows, None))
    bayes = test.bayes_metrics()
    cli._say(
        f"Synthetic CTR task from a known FM: {len(train):,} train / {len(valid):,} validation / "
        f"{len(test):,} test rows, {len(train.fields)} fields, "
        f"positive rate {train.labels.mean():.3f}"
    )
    plots_dir = pathlib.Path(args.plots)
    rows = [("Bayes-optimal (true probabilities)", bayes["auc"], bayes["logloss"], None, None)]
    curves = {"Bayes-optimal": test.truth}
    models = {}
    for name, build in (("FM", tf_fm.FM), ("DeepFM", tf_fm.DeepFM)):
        cli._say(f"\nTraining {name} (at most {args.epochs} epochs, early stopping on val AUC) ...")
        model = tf_fm.compile_model(build(train.fields), learning_rate=LEARNING_RATE)
        began = time.monotonic()
        history = model.fit(
            train.dataset(batch_size=BATCH_SIZE, seed=args.seed),
            validation_data=valid.dataset(batch_size=4096, shuffle=False),
            epochs=args.epochs,
            shuffle=False,  # the dataset shuffles itself
            callbacks=tf_fm.default_callbacks("binary", patience=2),
            verbose=cli._verbosity(),
        )
        seconds = time.monotonic() - began
        predictions = model.predict(test.features, batch_size=4096, verbose=0).reshape(-1)
        got = test.evaluate(predictions)
        epochs = len(history.history["loss"])
        rows.append((name, got["auc"], got["logloss"], epochs, seconds))
        curves[name] = predictions
        models[name] = model
        plots_lib.plot_training_curves(
            history, path=plots_dir / f"{name.lower()}_training_curves.png", title=name
        )

    cli._say(f"\n{'model':<36} {'test AUC':>9} {'logloss':>9} {'AUC gap':>9} {'epochs':>7}")
    for name, auc, logloss, epochs, seconds in rows:
        tail = f" {epochs:>7}  ({seconds:.0f} s)" if epochs else ""
        cli._say(f"{name:<36} {auc:9.4f} {logloss:9.4f} {bayes['auc'] - auc:9.4f}{tail}")

    paths = [plots_dir / f"{n.lower()}_training_curves.png" for n in models]
    paths.append(plots_dir / "roc.png")
    plots_lib.plot_roc(test.labels, curves, path=paths[-1], title="Test ROC")
    paths.append(plots_dir / "calibration.png")
    plots_lib.plot_calibration(test.labels, curves, path=paths[-1], title="Test calibration")
    cli._say("\nPlots: " + ", ".join(str(p) for p in paths))

    deepfm = models["DeepFM"]
    scores = dict(zip(("auc", "logloss"), rows[-1][1:3], strict=True))
    sample = {k: v[:1000] for k, v in test.features.items()}
    cli._say("")
    path = cli._export(
        deepfm,
        None,
        args.export_dir,
        sample,
        {**scores, "bayes_auc": bayes["auc"]},
        "binary",
    )
    request = tf_fm.to_rest_json({k: v[:2] for k, v in sample.items()})
    cli._say(
        "\nServe it: docker run -p 8501:8501 "
        f"-v {path.parent.resolve()}:/models/deepfm_demo -e MODEL_NAME=deepfm_demo "
        "tensorflow/serving"
    )
    cli._say(
        "then POST to http://localhost:8501/v1/models/deepfm_demo:predict a body such as\n"
        f"  {request}"
    )
    cli._say(f"\nDone in {time.monotonic() - start:.0f} s.")
    return 0
