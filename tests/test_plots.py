import json

import keras
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

import tf_fm
from tf_fm import metrics, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # Not a blank canvas: something was drawn.
    assert image[..., :3].std() > 0.01


def lines_by_gid(figure, prefix):
    return {
        line.get_gid(): line
        for ax in figure.axes
        for line in ax.get_lines()
        if (line.get_gid() or "").startswith(prefix)
    }


def binary_data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    truth = 1 / (1 + np.exp(-(rng.normal(size=n) - 1.5)))
    labels = (rng.random(n) < truth).astype("float32")
    return labels, truth


HISTORY = {
    "loss": [0.60, 0.50, 0.45, 0.42],
    "val_loss": [0.58, 0.46, 0.47, 0.50],  # best: epoch 2 (min)
    "auc": [0.70, 0.75, 0.78, 0.80],
    "val_auc": [0.69, 0.72, 0.74, 0.73],  # best: epoch 3 (max)
    "logloss": [0.55, 0.48, 0.44, 0.41],
    "val_logloss": [0.54, 0.47, 0.46, 0.45],  # best: epoch 4 (min)
    "learning_rate": [1e-3] * 4,  # not plotted
}


def test_save_plots_writes_valid_pngs_atomically(tmp_path):
    labels, p = binary_data()
    out = tmp_path / "run" / "plots"  # parents created
    written = plots.save_plots(out, history=HISTORY, labels=labels, predictions=p)
    assert set(written) == {"training_curves", "roc", "calibration"}
    for name, path in written.items():
        assert path == out / f"{name}.png"
        assert_png(path)
    # No temporary file is left beside them.
    assert sorted(f.name for f in out.iterdir()) == [
        "calibration.png",
        "roc.png",
        "training_curves.png",
    ]

    rng = np.random.default_rng(1)
    targets = rng.normal(size=500)
    written = plots.save_plots(
        tmp_path / "reg",
        labels=targets,
        predictions=targets + rng.normal(size=500),
        task="regression",
    )
    assert set(written) == {"predicted_vs_actual"}
    assert_png(written["predicted_vs_actual"])


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "roc.png"
    path.write_bytes(b"old")
    labels, p = binary_data(200)
    figure = plots.plot_roc(labels, p)

    def broken_savefig(file, **kwargs):
        file.write(PNG_MAGIC)  # half a file, then a failure
        raise OSError("disk full")

    figure.savefig = broken_savefig
    with pytest.raises(OSError, match="disk full"):
        plots._save(figure, path)
    assert path.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["roc.png"]


def test_returned_figures_display_inline():
    labels, p = binary_data(300)
    figure = plots.plot_roc(labels, p)
    assert isinstance(figure, Figure)
    assert figure._repr_png_()[:8] == PNG_MAGIC


def test_calibration_bins_match_hand_and_numpy():
    # Uniform bins by hand: [0, .25) [.25, .5) [.5, .75) [.75, 1]; the second is empty.
    labels = [0, 0, 1, 0, 1, 1, 1]
    p = [0.0, 0.1, 0.2, 0.5, 0.7, 0.8, 1.0]
    mean_predicted, observed, counts = plots.calibration_bins(labels, p, 4, "uniform")
    np.testing.assert_allclose(mean_predicted, [0.1, 0.6, 0.9])
    np.testing.assert_allclose(observed, [1 / 3, 0.5, 1.0])
    np.testing.assert_array_equal(counts, [3, 2, 2])

    # Quantile bins against an explicit numpy computation, with bunched values.
    rng = np.random.default_rng(0)
    p = np.round(rng.beta(0.5, 8.0, size=2000), 3)
    labels = (rng.random(2000) < p).astype(np.float64)
    edges = np.quantile(p, np.linspace(0, 1, 11))
    want = []
    for i in range(10):
        upper = p <= edges[i + 1] if i == 9 else p < edges[i + 1]
        mask = (p >= edges[i]) & upper
        if mask.any():
            want.append((p[mask].mean(), labels[mask].mean(), mask.sum()))
    got = plots.calibration_bins(labels, p, n_bins=10, strategy="quantile")
    np.testing.assert_allclose(got[0], [w[0] for w in want], rtol=1e-12)
    np.testing.assert_allclose(got[1], [w[1] for w in want], rtol=1e-12)
    np.testing.assert_array_equal(got[2], [w[2] for w in want])
    assert got[2].sum() == 2000
    assert got[2].min() > 100 and got[2].max() < 300  # about equal counts (ties move edges)

    # Many tied predictions: equal quantile edges merge into fewer bins.
    p = np.r_[np.full(80, 0.01), np.linspace(0.2, 0.9, 20)]
    labels = np.r_[np.zeros(79), 1, np.ones(20)]
    mean_predicted, observed, counts = plots.calibration_bins(labels, p, 10)
    assert counts[0] == 80 and mean_predicted[0] == pytest.approx(0.01)
    assert observed[0] == pytest.approx(1 / 80)
    assert counts.sum() == 100 and len(counts) < 10

    # The figure draws exactly these points.
    figure = plots.plot_calibration(labels, {"m": p}, n_bins=10)
    line = lines_by_gid(figure, "calib:")["calib:m"]
    np.testing.assert_allclose(line.get_xdata(), mean_predicted)
    np.testing.assert_allclose(line.get_ydata(), observed)


def test_best_epoch_marker():
    assert plots.best_epoch(HISTORY, "loss") == (2, 0.46)
    assert plots.best_epoch(HISTORY, "auc") == (3, 0.74)
    assert plots.best_epoch(HISTORY, "logloss") == (4, 0.45)
    # NaN epochs (a diverged step) are skipped.
    assert plots.best_epoch({"val_rmse": [1.0, float("nan"), 0.5]}, "rmse") == (3, 0.5)

    figure = plots.plot_training_curves(HISTORY, title="run")
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["loss", "AUC", "log loss"]
    for ax, want in zip(figure.axes, [(2, 0.46), (3, 0.74), (4, 0.45)], strict=True):
        (marker,) = [line for line in ax.get_lines() if line.get_gid() == "best_epoch"]
        assert (marker.get_xdata()[0], marker.get_ydata()[0]) == want
        assert f"epoch {want[0]}" in marker.get_label()
        train, valid = ax.get_lines()[:2]
        np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3, 4])  # 1-based epochs

    # Training series only: curves, no marker.
    figure = plots.plot_training_curves({"loss": [3.0, 2.0]})
    assert not lines_by_gid(figure, "best_epoch")


def test_history_from_a_real_fit_and_from_json(tmp_path):
    keras.utils.set_random_seed(0)
    train, test = tf_fm.data.make_fm_data(n_train=2000, n_test=500, seed=0)
    model = tf_fm.compile_model(tf_fm.FM(train.fields, embedding_dim=4), learning_rate=1e-2)
    history = model.fit(
        train.dataset(batch_size=256),
        validation_data=test.dataset(batch_size=500, shuffle=False),
        epochs=3,
        verbose=0,
    )
    figure = plots.plot_training_curves(history, path=tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")
    assert [ax.get_title() for ax in figure.axes] == ["loss", "AUC", "log loss"]
    val_auc = history.history["val_auc"]
    (marker,) = [line for line in figure.axes[1].get_lines() if line.get_gid() == "best_epoch"]
    assert marker.get_xdata()[0] == int(np.argmax(val_auc)) + 1

    # The same history as a JSON file gives the same curves.
    path = tmp_path / "history.json"
    path.write_text(json.dumps(history.history))
    again = plots.plot_training_curves(path)
    for a, b in zip(figure.axes, again.axes, strict=True):
        for la, lb in zip(a.get_lines(), b.get_lines(), strict=True):
            np.testing.assert_array_equal(la.get_xydata(), lb.get_xydata())

    # A resumed run: the History's own epoch numbers (initial_epoch=3 -> 4, 5).
    resumed = model.fit(
        train.dataset(batch_size=256),
        validation_data=test.dataset(batch_size=500, shuffle=False),
        initial_epoch=3,
        epochs=5,
        verbose=0,
    )
    figure = plots.plot_training_curves(resumed)
    np.testing.assert_array_equal(figure.axes[0].get_lines()[0].get_xdata(), [4, 5])

    p = model.predict(test.features, batch_size=500, verbose=0)
    figure = plots.plot_roc(test.labels, p)
    assert (
        f"AUC {metrics.roc_auc(test.labels, p):.4f}"
        in figure.axes[0].get_legend_handles_labels()[1][0]
    )


def test_dict_predictions_give_one_curve_each():
    labels, truth = binary_data()
    rng = np.random.default_rng(2)
    predictions = {
        "truth": truth,
        "noisy": np.clip(truth + rng.normal(0, 0.1, len(truth)), 0, 1),
        "constant": np.full(len(truth), 0.3),
    }
    figure = plots.plot_roc(labels, predictions)
    curves = lines_by_gid(figure, "roc:")
    assert sorted(curves) == ["roc:constant", "roc:noisy", "roc:truth"]
    legend = figure.axes[0].get_legend_handles_labels()[1]
    for name, p in predictions.items():
        assert f"{name} (AUC {metrics.roc_auc(labels, p):.4f})" in legend
        fpr, tpr = curves[f"roc:{name}"].get_data()
        # The drawn curve's area is the AUC (ties included: "constant" is the diagonal).
        assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc(labels, p), abs=1e-12)
    assert "chance (AUC 0.5)" in legend

    figure = plots.plot_calibration(labels, predictions, strategy="uniform")
    assert sorted(lines_by_gid(figure, "calib:")) == [
        "calib:constant",
        "calib:noisy",
        "calib:truth",
    ]
    assert len(figure.axes[1].patches) == 3  # one histogram per model


def test_roc_curve_with_ties_matches_auc():
    fpr, tpr = plots.roc_curve([0, 1, 1, 0], [0.1, 0.8, 0.4, 0.4])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.875)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: plots.plot_roc([0, 1, 1], [0.1, 0.2]),
            r"`predictions` has 2 values but `labels` has 3",
        ),
        (
            lambda: plots.plot_roc([0, 1], {"fm": [0.1, 0.2], "deep": [0.3]}),
            r"`predictions\['deep'\]` has 1 values",
        ),
        (lambda: plots.plot_roc([0, 2, 1], [0.1, 0.2, 0.3]), r"`labels` must be 0 or 1.*\[2.0\]"),
        (lambda: plots.plot_roc([1, 1], [0.1, 0.2]), r"`labels` must contain both classes"),
        (lambda: plots.plot_calibration([0, 0.5], [0.1, 0.2]), r"`labels` must be 0 or 1"),
        (
            lambda: plots.plot_calibration([0, 1], [0.1, 1.2]),
            r"`predictions` must be probabilities",
        ),
        (lambda: plots.plot_calibration([0, 1], [0.1, 0.9], strategy="kmeans"), r"`strategy`"),
        (lambda: plots.calibration_bins([0, 1], [0.1, 0.9], n_bins=0), r"`n_bins`"),
        (lambda: plots.plot_roc([0, 1], [0.1, np.nan]), r"`predictions` has 1 non-finite"),
        (lambda: plots.plot_roc([], []), r"`labels` must be a non-empty"),
        (lambda: plots.plot_roc([0, 1], {}), r"`predictions` is an empty dict"),
        (lambda: plots.plot_training_curves({}), r"`history` is empty"),
        (lambda: plots.plot_training_curves({"loss": []}), r"`history` is empty"),
        (lambda: plots.plot_training_curves({"accuracy": [0.5]}), r"`history` has none of"),
        (
            lambda: plots.plot_training_curves({"loss": [1, 2, 3], "val_loss": [1]}),
            r"`history` series differ in length",
        ),
        (lambda: plots.plot_training_curves("/nonexistent/h.json"), r"`history` names no file"),
        (lambda: plots.plot_training_curves([0.5, 0.4]), r"`history` must be"),
        (lambda: plots.best_epoch({"loss": [1.0]}, "loss"), r"no 'val_loss' series"),
        (lambda: plots.best_epoch(HISTORY, "accuracy"), r"`metric`"),
        (lambda: plots.save_plots("/tmp/x", labels=[0, 1]), r"`predictions` is None"),
        (lambda: plots.save_plots("/tmp/x"), r"Nothing to plot"),
        (lambda: plots.save_plots("/tmp/x", history=HISTORY, task="ranking"), r"`task`"),
        (lambda: plots.plot_training_curves(HISTORY, path="/tmp/x/curves.txt"), r"`path`"),
    ],
)
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_history_file(tmp_path):
    path = tmp_path / "h.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="`history` file .* is not JSON"):
        plots.plot_training_curves(path)
    path.write_text(json.dumps({"loss": ["a", "b"]}))
    with pytest.raises(ValueError, match=r"`history\['loss'\]` must be a list of numbers"):
        plots.plot_training_curves(path)
