"""One peer's DeepFM (FuxiCTR or DeepCTR) on quality.py's split files, configured by its authors.

Runs INSIDE the peer's own venv (`quality.py --install-peers` makes them) and
imports nothing from tf_fm. It reads the train / dev / test files that
`benchmarks/quality.py`'s LOADERS write, preprocesses them the peer's usual
way (vocabularies and scalers fitted on the train file only), trains, scores
the test file with scikit-learn (`roc_auc_score`, `log_loss`) and prints one
JSON line: peer, dataset, seed, auc, logloss, epochs, seconds (preprocessing
and training, the test predictions excluded, as quality.py times tf_fm), the
config and the versions.

Reading (both peers): `criteo` = raw Criteo DAC, TAB separated, no header,
`label I1..I13 C1..C26`; I1..I13 numeric, C1..C26 categorical. `avazu` =
Avazu CSV (a header on the train file only, detected from the first line);
`id` dropped, label `click`, every other column categorical (as tf_fm's
`avazu` format). `csv` = a header, `--label` the label; the `--numeric`
columns numeric; with `--separator`, a column some train value of which
contains it is multi-valued (tf_fm's rule), the rest categorical. All values
are read as strings; empty fields are missing.

FuxiCTR (`--peer fuxictr`, fuxictr 2.3.10, PyTorch):

* The model: fuxictr's pip package does not ship `model_zoo/DeepFM`, so
  `FuxiDeepFM` below composes fuxictr's own `BaseModel`, `FeatureEmbedding`,
  `FactorizationMachine` (first order + bias + pairwise) and `MLP_Block` the
  way `model_zoo/DeepFM/DeepFM_torch/src/DeepFM.py` does: logit = FM(x) +
  MLP(flattened embeddings), sigmoid.
* Training: fuxictr's `BaseModel.fit` unchanged: Adam, binary cross-entropy
  plus the L2 embedding regularizer on the full tables each step, gradient
  norm clipped at 10, validation every epoch on the dev file, monitor AUC
  (max), on a plateau LR x0.1 (down to 1e-6), stop after 2 plateaus
  (`early_stop_patience=2`), up to 100 epochs, the best epoch's weights
  reloaded. Seeds: fuxictr's `seed_everything(seed)`.
* Hyper-parameters: the BARS benchmark's tuned DeepFM configs (FuxiCTR 1.1
  runs published with BARS): embedding_dim 10, hidden units [400, 400, 400]
  ReLU, batch norm, batch size 4096, lr 1e-3, net_regularizer 0, and
  per dataset family (`FUXICTR_TUNED`): Criteo_x1 (`criteo`, `criteo_tiny`,
  any other) embedding_regularizer 1e-5, net_dropout 0.1; Avazu_x1
  (`avazu`) 0.1 and 0.3; MovielensLatest_x1 (`movielens`) 0.01 and 0.3.
  `DeepFM_default` (the model_zoo template: emb 40, [300]*3, no BN, batch
  10000) is the untuned template, not used.
* Preprocessing: fuxictr's `FeatureProcessor` with its raw-data recipes
  shipped in `fuxictr.datasets` (the BARS Criteo_x4 / Avazu_x4 dataset
  configs): numeric columns fill_na 0 then `convert_to_bucket`
  (floor(log(v)^2) for v > 2) and categorical; categorical strings fill_na
  "" (missing and unseen values get the OOV id); Avazu `hour` becomes hour of
  day (`convert_hour`) plus `weekday` and `weekend` columns; multi-valued
  columns (movielens `genres`) a `sequence` feature (splitter `|`, max_len
  the longest train value, `MaskedAveragePooling`). min_categr_count 1 (the
  library default and the x1 tuned configs' value). The processor's
  `transform` is called directly and the result kept as `.npz` files read by
  fuxictr's `NpzDataLoader` (num_workers 0): `build_dataset` would do the
  same transform through Ray and parquet.

DeepCTR (`--peer deepctr`, deepctr 0.9.4, TensorFlow 2.15 / Keras 2):

* As its documented example `examples/run_classification_criteo.py` (and
  `run_multivalue_movielens.py` for genres): categorical columns fillna
  "-1" and label-encoded (ids 1..n in sorted order, fitted on the train
  file; unseen values 0, one extra row: the example fits LabelEncoder on all
  the data at once instead), `SparseFeat(embedding_dim=4)`; numeric columns
  fillna 0 and `MinMaxScaler((0, 1))` fitted on train, `DenseFeat(1)`;
  multi-valued columns split on the separator, tokens ids 1..n from train
  (unseen tokens dropped, 0 = padding), post-padded to the longest train
  value, `VarLenSparseFeat(combiner="mean")`.
* `DeepFM(linear, dnn, task="binary", seed=seed)` with its defaults
  (dnn_hidden_units (256, 128, 64), l2_reg_embedding 1e-5, l2_reg_linear
  1e-5, no dropout, no batch norm), `compile("adam", "binary_crossentropy")`
  (Adam lr 1e-3), `fit(batch_size=256)` as in the example; instead of its
  fixed 10 epochs: up to 100 epochs with `EarlyStopping(monitor="val_auc",
  mode="max", patience=2, restore_best_weights=True)` on the dev file (no LR
  schedule, the example has none). Seeds: `tf.keras.utils.set_random_seed`.

Usage (from quality.py, or by hand):
    /work/peers_venvs/fuxictr/bin/python benchmarks/quality_peers.py --peer fuxictr \\
        --format criteo --train train.csv --dev dev.csv --test test.csv --seed 0
"""

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

CRITEO_COLUMNS = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
AVAZU_COLUMNS = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category",
    "app_id", "app_domain", "app_category", "device_id", "device_ip", "device_model",
    "device_type", "device_conn_type", *(f"C{i}" for i in range(14, 22)),
]  # fmt: skip
COMMON = {"embedding_dim": 10, "hidden_units": [400, 400, 400], "batch_norm": True}
FUXICTR_TUNED = {
    "Criteo_x1": {**COMMON, "embedding_regularizer": 1e-5, "net_dropout": 0.1},
    "Avazu_x1": {**COMMON, "embedding_regularizer": 0.1, "net_dropout": 0.3},
    "MovielensLatest_x1": {**COMMON, "embedding_regularizer": 0.01, "net_dropout": 0.3},
}
FUXICTR_FOR = {"avazu": "Avazu_x1", "movielens": "MovielensLatest_x1"}  # else Criteo_x1
DEEPCTR_BATCH, PATIENCE, MAX_EPOCHS = 256, 2, 100


# --- Reading (both peers) -----------------------------------------------------


@dataclass
class Data:
    """The three splits as string frames, and each column's role."""

    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame
    label: str
    numeric: list = field(default_factory=list)
    categorical: list = field(default_factory=list)
    multivalued: list = field(default_factory=list)
    separator: str | None = None
    fmt: str = "csv"

    def splits(self) -> dict:
        return {"train": self.train, "valid": self.dev, "test": self.test}

    def features(self) -> list:
        return self.numeric + self.categorical + self.multivalued


def read_file(path: str, fmt: str) -> pd.DataFrame:
    """One file as strings (missing = NaN), label column as read."""
    if fmt == "criteo":
        return pd.read_csv(path, sep="\t", header=None, names=CRITEO_COLUMNS, dtype=str)
    if fmt == "avazu":
        with open(path) as f:
            has_header = f.readline().startswith("id,")
        names = None if has_header else AVAZU_COLUMNS
        frame = pd.read_csv(path, header=0 if has_header else None, names=names, dtype=str)
        return frame.drop(columns=["id"])
    return pd.read_csv(path, dtype=str)


def read_data(args: argparse.Namespace) -> Data:
    frames = [read_file(p, args.format) for p in (args.train, args.dev, args.test)]
    label = {"criteo": "label", "avazu": "click"}.get(args.format, args.label)
    for frame in frames:
        frame[label] = frame[label].astype(float).astype(int)
    data = Data(*frames, label=label, separator=args.separator, fmt=args.format)
    columns = [c for c in frames[0].columns if c != label]
    if args.format == "criteo":
        data.numeric = [c for c in columns if c.startswith("I")]
    else:
        data.numeric = [c for c in columns if c in set(args.numeric or [])]
    for c in columns:
        if c in data.numeric:
            continue
        values = frames[0][c].dropna()
        multi = args.separator and values.str.contains(args.separator, regex=False).any()
        (data.multivalued if multi else data.categorical).append(c)
    return data


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_pred = np.clip(np.asarray(y_pred, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(y_true, y_pred)), "logloss": float(log_loss(y_true, y_pred))}


# --- FuxiCTR --------------------------------------------------------------------


def _col(name: str, dtype: str = "str", kind: str = "categorical", **extra) -> dict:
    return {"name": name, "dtype": dtype, "type": kind, "active": True, **extra}


def fuxictr_feature_cols(data: Data) -> list:
    """fuxictr feature_cols: the BARS raw Criteo / Avazu recipes (see the docstring)."""
    cols = []
    for c in data.features():
        if c in data.numeric:
            cols.append(_col(c, "float", fill_na=0, preprocess="convert_to_bucket"))
        elif c in data.multivalued:
            cols.append(_col(c, kind="sequence", splitter=data.separator))
        elif data.fmt == "avazu" and c == "hour":
            cols.append(_col(c, preprocess="convert_hour"))
        else:
            cols.append(_col(c, fill_na=""))
    if data.fmt == "avazu":  # after hour: preprocess() goes through the columns backwards
        cols += [_col(name, preprocess=f"convert_{name}") for name in ("weekday", "weekend")]
    return cols


def fuxictr_processor(data: Data, work: str):
    """fuxictr's FeatureProcessor with its Criteo and Avazu raw-data methods."""
    global Processor  # module level: fit() pickles the processor
    from fuxictr.datasets import avazu, criteo

    class Processor(criteo.CustomizedFeatureProcessor, avazu.CustomizedFeatureProcessor):
        pass

    label_col = {"name": data.label, "dtype": "float"}
    cols = fuxictr_feature_cols(data)
    return Processor(feature_cols=cols, label_col=label_col, dataset_id="data", data_root=work)


def fuxictr_encode(data: Data, work: str, params: dict):
    """Fits the processor on train, writes the three splits as .npz; (feature_map, paths)."""
    import polars as pl
    from fuxictr.features import FeatureMap

    processor = fuxictr_processor(data, work)
    lazy = {}
    for name, frame in data.splits().items():
        frame = pl.from_pandas(frame.astype(object).where(frame.notna(), None))
        casts = [pl.col(c).cast(pl.Float64) for c in data.numeric]
        frame = frame.with_columns(pl.col(data.label).cast(pl.Float64), *casts)
        lazy[name] = processor.preprocess(frame.lazy())
    processor.fit(lazy["train"], min_categr_count=1)
    paths = {}
    for name, frame in lazy.items():
        frame = frame.collect()
        batch = processor.transform({c: frame[c].to_list() for c in frame.columns})
        paths[name] = os.path.join(processor.data_dir, f"{name}.npz")
        np.savez(paths[name], **{c: np.asarray(v) for c, v in batch.items()})
    feature_map = FeatureMap("data", processor.data_dir)
    feature_map.load(processor.json_file, params)
    return feature_map, paths


def fuxictr_model_class():
    """DeepFM from fuxictr's layers, as model_zoo/DeepFM/DeepFM_torch does it."""
    from fuxictr.pytorch.layers import FactorizationMachine, FeatureEmbedding, MLP_Block
    from fuxictr.pytorch.models import BaseModel

    class FuxiDeepFM(BaseModel):
        def __init__(self, feature_map, **params):
            super().__init__(feature_map, model_id="DeepFM", **params)
            self.embedding_layer = FeatureEmbedding(feature_map, params["embedding_dim"])
            self.fm = FactorizationMachine(feature_map)
            self.mlp = MLP_Block(
                input_dim=feature_map.sum_emb_out_dim(),
                output_dim=1,
                hidden_units=params["hidden_units"],
                hidden_activations="relu",
                output_activation=None,
                dropout_rates=params["net_dropout"],
                batch_norm=params["batch_norm"],
            )
            self.compile(params["optimizer"], params["loss"], params["learning_rate"])
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            feature_emb = self.embedding_layer(X)
            y_pred = self.fm(X, feature_emb) + self.mlp(feature_emb.flatten(start_dim=1))
            return {"y_pred": self.output_activation(y_pred)}

    return FuxiDeepFM


def fuxictr_params(dataset: str, work: str, batch_size: int = 4096) -> tuple[str, dict]:
    config = FUXICTR_FOR.get(dataset, "Criteo_x1")
    params = {
        **FUXICTR_TUNED[config],
        "learning_rate": 1e-3, "optimizer": "adam", "loss": "binary_crossentropy",
        "net_regularizer": 0, "batch_size": batch_size, "epochs": MAX_EPOCHS, "shuffle": True,
        "monitor": "AUC", "monitor_mode": "max", "early_stop_patience": PATIENCE,
        "metrics": ["AUC", "logloss"], "task": "binary_classification", "gpu": -1,
        "verbose": 0, "model_root": os.path.join(work, "checkpoints"), "num_workers": 0,
    }  # fmt: skip
    suffix = "" if batch_size == 4096 else f", batch {batch_size}"
    return f"FuxiCTR BARS DeepFM_{config} tuned{suffix}", params


def run_fuxictr(data: Data, args: argparse.Namespace, work: str) -> dict:
    import fuxictr
    import torch
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything

    config, params = fuxictr_params(args.dataset, work, args.batch_size)
    seed_everything(seed=args.seed)
    start = time.perf_counter()
    feature_map, paths = fuxictr_encode(data, work, params)
    loader = {**params, "data_format": "npz"}
    train_gen, valid_gen = RankDataLoader(
        feature_map, stage="train", train_data=paths["train"], valid_data=paths["valid"], **loader
    )
    model = fuxictr_model_class()(feature_map, **params)
    os.makedirs(model.model_dir, exist_ok=True)
    model.fit(train_gen, validation_data=valid_gen, **params)
    seconds = time.perf_counter() - start
    test_gen = RankDataLoader(feature_map, stage="test", test_data=paths["test"], **loader)
    scores = metrics(data.test[data.label].to_numpy(), model.predict(test_gen))
    return {
        **scores,
        "epochs": model._epoch_index + 1,
        "seconds": seconds,
        "config": config,
        "versions": f"fuxictr {fuxictr.__version__}, torch {torch.__version__}",
    }


# --- DeepCTR --------------------------------------------------------------------


def label_encode(train: pd.Series, other: list) -> tuple[int, list]:
    """Ids 1..n (sorted) from train, unseen 0; (vocabulary size, encoded series)."""
    vocab = {v: i for i, v in enumerate(sorted(train.unique()), 1)}
    return len(vocab) + 1, [s.map(vocab).fillna(0).astype("int32") for s in [train, *other]]


def sequence_encode(train: pd.Series, other: list, separator: str) -> tuple[int, int, list]:
    """Token ids 1..n from train (unseen tokens dropped), post-padded; (vocab, maxlen, arrays)."""
    tokens = [s.fillna("").str.split(separator) for s in [train, *other]]
    vocab = {t: i for i, t in enumerate(sorted({t for ts in tokens[0] for t in ts if t}), 1)}
    maxlen = max(1, max(len(ts) for ts in tokens[0]))
    arrays = []
    for series in tokens:
        out = np.zeros((len(series), maxlen), dtype="int32")
        for row, ts in enumerate(series):
            ids = [vocab[t] for t in ts if t in vocab][:maxlen]
            out[row, : len(ids)] = ids
        arrays.append(out)
    return len(vocab) + 1, maxlen, arrays


def deepctr_inputs(data: Data) -> tuple[list, list]:
    """DeepCTR feature columns and the three splits' input dicts (see the docstring)."""
    from deepctr.feature_column import DenseFeat, SparseFeat, VarLenSparseFeat
    from sklearn.preprocessing import MinMaxScaler

    train, *others = [data.train, data.dev, data.test]
    columns, inputs = [], [{}, {}, {}]
    for c in data.categorical:
        size, encoded = label_encode(train[c].fillna("-1"), [f[c].fillna("-1") for f in others])
        columns.append(SparseFeat(c, vocabulary_size=size, embedding_dim=4))
        for inp, values in zip(inputs, encoded, strict=True):
            inp[c] = values.to_numpy()
    for c in data.multivalued:
        size, maxlen, arrays = sequence_encode(train[c], [f[c] for f in others], data.separator)
        columns.append(VarLenSparseFeat(SparseFeat(c, size, embedding_dim=4), maxlen, "mean"))
        for inp, values in zip(inputs, arrays, strict=True):
            inp[c] = values
    if data.numeric:
        dense = [f[data.numeric].astype(float).fillna(0) for f in (train, *others)]
        scaler = MinMaxScaler(feature_range=(0, 1)).fit(dense[0])
        for inp, frame in zip(inputs, dense, strict=True):
            scaled = scaler.transform(frame)
            inp.update({c: scaled[:, j] for j, c in enumerate(data.numeric)})
        columns += [DenseFeat(c, 1) for c in data.numeric]
    return columns, inputs


def run_deepctr(data: Data, args: argparse.Namespace, work: str) -> dict:
    import deepctr
    import tensorflow as tf
    from deepctr.models import DeepFM

    tf.keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    columns, (train, dev, test) = deepctr_inputs(data)
    model = DeepFM(columns, columns, task="binary", seed=args.seed)
    model.compile("adam", "binary_crossentropy", metrics=[tf.keras.metrics.AUC(name="auc")])
    stop = tf.keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=PATIENCE, restore_best_weights=True
    )
    labels = [f[data.label].to_numpy() for f in (data.train, data.dev, data.test)]
    history = model.fit(
        train,
        labels[0],
        batch_size=DEEPCTR_BATCH,
        epochs=MAX_EPOCHS,
        verbose=0,
        validation_data=(dev, labels[1]),
        callbacks=[stop],
    )
    seconds = time.perf_counter() - start
    scores = metrics(labels[2], model.predict(test, batch_size=DEEPCTR_BATCH, verbose=0))
    return {
        **scores,
        "epochs": len(history.history["loss"]),
        "seconds": seconds,
        "config": f"DeepCTR example defaults + EarlyStopping(val_auc, {PATIENCE})",
        "versions": f"deepctr {deepctr.__version__}, tensorflow {tf.__version__}",
    }


PEERS = {"fuxictr": run_fuxictr, "deepctr": run_deepctr}


def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", required=True, choices=sorted(PEERS))
    parser.add_argument("--format", required=True, choices=["criteo", "avazu", "csv"])
    parser.add_argument("--train", required=True)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--label", default="label", help="label column of csv files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--separator", help="multi-valued separator of csv files, e.g. '|'")
    parser.add_argument("--numeric", nargs="*", help="numeric columns of csv files")
    parser.add_argument("--dataset", default="", help="name in the output; picks FuxiCTR's config")
    parser.add_argument(
        "--batch-size", type=int, default=4096, help="FuxiCTR's batch (BARS's tuned configs: 4096)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data = read_data(args)
    with tempfile.TemporaryDirectory(prefix=f"quality_{args.peer}_") as work:
        result = PEERS[args.peer](data, args, work)
    line = {"peer": args.peer, "dataset": args.dataset, "seed": args.seed, **result}
    sys.stdout.flush()
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
