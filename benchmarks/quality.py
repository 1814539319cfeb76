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

Peers, in the same seed loop on the same split files: `fuxictr_deepfm`
(FuxiCTR's DeepFM, PyTorch, BARS's tuned configs) and `deepctr_deepfm`
(DeepCTR's DeepFM, Keras 2, its documented example) run by
`quality_peers.py` in their own venvs (`--fuxictr-python`,
`--deepctr-python`; `--install-peers` creates both); its docstring states
each configuration choice. A missing interpreter or import gives a "not
installed" row. For the peers, criteo_tiny's 13 numeric columns are declared
numeric and movielens `genres` multi-valued (FuxiCTR `sequence`, DeepCTR
`VarLenSparseFeat`).

Usage:
    python benchmarks/quality.py                              # all, 3 seeds
    python benchmarks/quality.py --datasets criteo --models fm deepfm --seeds 0
    python benchmarks/quality.py --out benchmarks/quality.md --json /tmp/quality.jsonl
    python benchmarks/quality.py --summarize /tmp/quality.jsonl   # the table of earlier runs
    python benchmarks/quality.py --datasets movielens --models deepfm deepfm:dropout=0.1
                                        # one default changed: MODEL:KEY=VALUE,...
    python benchmarks/quality.py --install-peers                  # once: the peers' venvs
    python benchmarks/quality.py --models fm deepfm fuxictr_deepfm deepctr_deepfm \
        --json /tmp/quality_peers.jsonl --out benchmarks/quality_peers.md
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
DATASETS = ("criteo", "avazu", "criteo_tiny", "movielens")
MODELS = ("fm", "deepfm", "hofm", "fwfm", "ffm", "nfm")
# model -> --peer, and that peer's extra arguments: `fuxictr_deepfm_b1024` is
# BARS's tuned config at tf_fm's default batch (4096 leaves 2-3 steps an epoch here).
PEERS = {
    "fuxictr_deepfm": "fuxictr",
    "fuxictr_deepfm_b1024": "fuxictr",
    "deepctr_deepfm": "deepctr",
}
PEER_ARGS = {"fuxictr_deepfm_b1024": ["--batch-size", "1024"]}
PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quality_peers.py")
PEER_NUMERIC = {"criteo_tiny": [f"I{i}" for i in range(1, 14)]}  # numeric csv columns
TORCH_WHEEL = "/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
PEER_PACKAGES = {  # pinned: the versions the committed table was measured with
    "fuxictr": [
        "fuxictr==2.3.10", "polars==2.1.0", "ray==2.60.0", "pandas==3.1.1", "numpy==2.4.6",
        "scikit-learn==1.9.1", "pyarrow==26.0.1", "h5py==3.16.0",
    ],
    # deepctr 0.9.3 fails on Python 3.11 + TF 2.15 (it pins h5py==3.7.0, which has no
    # cp311 wheel, and imports tensorflow.python.keras.layers.LSTM, gone in 2.15).
    "deepctr": [
        "tensorflow-cpu==2.15.1", "deepctr==0.9.4", "numpy==1.26.4", "pandas==3.0.6",
        "scikit-learn==1.9.1",
    ],
}  # fmt: skip


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


def parse_variant(model):
    """`"deepfm:dropout=0.1,batch_norm=true"` -> `("deepfm", {"dropout": 0.1, "batch_norm": True})`.

    A model of `MODELS` with some `tf_fm.train` options changed from their
    defaults (values read as JSON, else kept as text): one default at a time
    against the run API's others.
    """
    base, _, changes = model.partition(":")
    if base not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {base!r} in {model!r}")
    overrides = {}
    for change in filter(None, changes.split(",")):
        key, _, value = change.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return base, overrides


def model_choice(text):
    if text in PEERS:
        return text
    parse_variant(text)
    return text


def run_one(dataset, data, model, seed, work):
    """Trains `model` (or a variant, `parse_variant`) on `data`; test metrics, epochs, seconds."""
    import keras

    import tf_fm

    fmt, train, dev, test, options = data
    model_name, overrides = parse_variant(model)
    keras.backend.clear_session()
    start = time.perf_counter()
    run = tf_fm.train(
        train,
        format=fmt,
        valid=dev,
        output=os.path.join(work, f"{dataset}_{model}_{seed}".replace(":", "_").replace(",", "_")),
        model=model_name,
        seed=seed,
        log=lambda line: None,
        verbose=0,
        **options,
        **overrides,
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


def peer_command(dataset, data, model, seed, python):
    fmt, train, dev, test, options = data
    command = [python, PEER_SCRIPT, "--peer", PEERS[model], "--format", fmt, "--seed", str(seed)]
    command += ["--train", train[0], "--dev", dev[0], "--test", test[0], "--dataset", dataset]
    if "label" in options:
        command += ["--label", options["label"]]
    if "separator" in options:
        command += ["--separator", options["separator"]]
    if dataset in PEER_NUMERIC:
        command += ["--numeric", *PEER_NUMERIC[dataset]]
    return command + PEER_ARGS.get(model, [])


def run_peer(dataset, data, model, seed, python):
    """Runs a peer's DeepFM in its venv (`quality_peers.py`); its result, or one with "skipped"."""
    row = {"dataset": dataset, "model": model, "seed": seed}
    if not os.path.exists(python):
        return {**row, "skipped": f"not installed: no interpreter {python}"}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": str(seed)}
    command = peer_command(dataset, data, model, seed, python)
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        missing = "ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr
        reason = "not installed" if missing else f"failed (exit {proc.returncode})"
        return {**row, "skipped": f"{reason}: {tail}"[:200]}
    result = json.loads(lines[-1])
    keep = ("auc", "logloss", "epochs", "seconds", "config", "versions")
    return {**row, **{k: result[k] for k in keep if k in result}}


def install_peers(fuxictr_python, deepctr_python):
    """Creates the peers' venvs (the ones the interpreters live in), pinned (PEER_PACKAGES)."""
    for peer, python in (("fuxictr", fuxictr_python), ("deepctr", deepctr_python)):
        venv = os.path.dirname(os.path.dirname(python))
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        pip = [python, "-m", "pip", "install", "--quiet"]
        if peer == "fuxictr":  # torch first, the local CPU wheel: unpinned pip takes a CUDA build
            torch = TORCH_WHEEL if os.path.isfile(TORCH_WHEEL) else "torch==2.13.0"
            subprocess.run(pip + [torch], check=True)
        subprocess.run(pip + PEER_PACKAGES[peer], check=True)
        print(f"{peer}: {venv} ready", flush=True)


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
            runs = [r for r in results if r["dataset"] == dataset and r["model"] == model]
            rows = [r for r in runs if "skipped" not in r]
            if not rows:
                if runs:
                    lines.append(f"| {dataset} | {model} | {runs[0]['skipped']} | - | - | - |")
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
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        type=model_choice,
        help=f"of {MODELS + tuple(PEERS)}; a variant: MODEL:KEY=VALUE,... (tf_fm.train options)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", help="write the markdown table here too")
    parser.add_argument("--json", help="append one JSON line per run here")
    parser.add_argument("--summarize", nargs="+", help="print the table of these JSON files")
    parser.add_argument("--fuxictr-python", default="/work/peers_venvs/fuxictr/bin/python")
    parser.add_argument("--deepctr-python", default="/work/peers_venvs/deepctr/bin/python")
    parser.add_argument("--install-peers", action="store_true", help="create the peers' venvs")
    args = parser.parse_args(argv)
    if args.install_peers:
        install_peers(args.fuxictr_python, args.deepctr_python)
        return
    if args.summarize:
        results = [json.loads(line) for path in args.summarize for line in open(path)]
        print(table(results, MODELS + tuple(PEERS), DATASETS))
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
                    if model in PEERS:
                        python = getattr(args, f"{PEERS[model]}_python")
                        result = run_peer(dataset, data, model, seed, python)
                    else:
                        result = run_one(dataset, data, model, seed, work)
                    results.append(result)
                    print(json.dumps(result), flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(result) + "\n")
    text = header(results, args) + table(results, args.models, args.datasets) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def header(results, args):
    """Command, date, versions (tf_fm's and each peer's) and seeds."""
    import keras
    import tensorflow as tf

    command = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
    peers = sorted({f"{r['model']}: {r['versions']}" for r in results if "versions" in r})
    peers = "".join(f"; {p}" for p in peers)
    return (
        f"Command: `{command}`\n\n"
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs{peers}; seeds {args.seeds}.\n\n"
    )


if __name__ == "__main__":
    main()
