"""FM and DeepFM on synthetic data with a known truth: AUC next to the Bayes AUC.

Run: python examples/quickstart.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

import tf_fm  # noqa: E402


def main():
    keras.utils.set_random_seed(0)
    # Rows drawn from a known ground-truth FM (see tf_fm.data.make_fm_data).
    train, test = tf_fm.data.make_fm_data(n_train=100_000, n_test=20_000, seed=0)
    bayes = test.bayes_metrics()
    print(
        f"synthetic FM task: {len(train)} train / {len(test)} test rows, "
        f"{len(train.fields)} fields, positive rate {train.labels.mean():.3f}"
    )
    rows = [("Bayes-optimal (true probabilities)", bayes["auc"], bayes["logloss"])]
    for name, build in (("FM", tf_fm.FM), ("DeepFM", tf_fm.DeepFM)):
        model = build(train.fields)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
        # shuffle=False: the dataset shuffles itself (Keras would warn it ignores the flag).
        model.fit(train.dataset(batch_size=512), epochs=5, verbose=0, shuffle=False)
        got = test.evaluate(model.predict(test.features, batch_size=4096, verbose=0))
        rows.append((name, got["auc"], got["logloss"]))
    print(f"\n{'model':<36} {'test AUC':>9} {'logloss':>9} {'AUC gap':>9}")
    for name, auc, ll in rows:
        print(f"{name:<36} {auc:9.4f} {ll:9.4f} {bayes['auc'] - auc:9.4f}")


if __name__ == "__main__":
    main()
