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
from tf_fm import plots as plots_lib
from tf_fm import training

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


def run(
    export_dir: str = "saved_models/deepfm_demo",
    plots_dir: str = "plots/demo",
    rows: int = 100_000,
    epochs: int = 8,
    seed: int = 0,
    log=print,
) -> int:
    """Runs the demo (what `tf-fm demo` prints); returns 0.

    Args:
        export_dir: where DeepFM is exported, as `<export_dir>/<version>`.
        plots_dir: directory of the PNG plots.
        rows: training rows (validation: a fifth of it, at least 1000).
        epochs: most epochs per model.
        seed: random seed of data, weights and shuffling.
        log: callable printing one line.
    """
    start = time.monotonic()
    keras.utils.set_random_seed(seed)
    n_valid = max(rows // 5, 1_000)
    data, test = tf_fm.data.make_fm_data(n_train=rows + n_valid, n_test=TEST_ROWS, seed=seed)
    train, valid = _rows(data, slice(0, rows)), _rows(data, slice(rows, None))
    bayes = test.bayes_metrics()
    log(
        f"Synthetic CTR task from a known FM: {len(train):,} train / {len(valid):,} validation / "
        f"{len(test):,} test rows, {len(train.fields)} fields, "
        f"positive rate {train.labels.mean():.3f}"
    )
    plots_dir = pathlib.Path(plots_dir)
    rows = [("Bayes-optimal (true probabilities)", bayes["auc"], bayes["logloss"], None, None)]
    curves = {"Bayes-optimal": test.truth}
    models = {}
    for name, build in (("FM", tf_fm.FM), ("DeepFM", tf_fm.DeepFM)):
        log(f"\nTraining {name} (at most {epochs} epochs, early stopping on val AUC) ...")
        model = tf_fm.compile_model(build(train.fields), learning_rate=LEARNING_RATE)
        began = time.monotonic()
        history = model.fit(
            train.dataset(batch_size=BATCH_SIZE, seed=seed),
            validation_data=valid.dataset(batch_size=4096, shuffle=False),
            epochs=epochs,
            shuffle=False,  # the dataset shuffles itself
            callbacks=tf_fm.default_callbacks("binary", patience=2),
            verbose=training.progress_verbosity(),
        )
        seconds = time.monotonic() - began
        predictions = model.predict(test.features, batch_size=4096, verbose=0).reshape(-1)
        got = test.evaluate(predictions)
        epochs_run = len(history.history["loss"])
        rows.append((name, got["auc"], got["logloss"], epochs_run, seconds))
        curves[name] = predictions
        models[name] = model
        plots_lib.plot_training_curves(
            history, path=plots_dir / f"{name.lower()}_training_curves.png", title=name
        )

    log(f"\n{'model':<36} {'test AUC':>9} {'logloss':>9} {'AUC gap':>9} {'epochs':>7}")
    for name, auc, logloss, epochs_run, seconds in rows:
        tail = f" {epochs_run:>7}  ({seconds:.0f} s)" if epochs_run else ""
        log(f"{name:<36} {auc:9.4f} {logloss:9.4f} {bayes['auc'] - auc:9.4f}{tail}")

    paths = [plots_dir / f"{n.lower()}_training_curves.png" for n in models]
    paths.append(plots_dir / "roc.png")
    plots_lib.plot_roc(test.labels, curves, path=paths[-1], title="Test ROC")
    paths.append(plots_dir / "calibration.png")
    plots_lib.plot_calibration(test.labels, curves, path=paths[-1], title="Test calibration")
    log("\nPlots: " + ", ".join(str(p) for p in paths))

    deepfm = models["DeepFM"]
    scores = dict(zip(("auc", "logloss"), rows[-1][1:3], strict=True))
    sample = {k: v[:1000] for k, v in test.features.items()}
    log("")
    path = training.export_model(
        deepfm, None, export_dir, sample, {**scores, "bayes_auc": bayes["auc"]}, log=log
    )
    request = tf_fm.to_rest_json({k: v[:2] for k, v in sample.items()})
    log(
        "\nServe it: docker run -p 8501:8501 "
        f"-v {path.parent.resolve()}:/models/deepfm_demo -e MODEL_NAME=deepfm_demo "
        "tensorflow/serving"
    )
    log(
        "then POST to http://localhost:8501/v1/models/deepfm_demo:predict a body such as\n"
        f"  {request}"
    )
    log(f"\nDone in {time.monotonic() - start:.0f} s.")
    return 0
