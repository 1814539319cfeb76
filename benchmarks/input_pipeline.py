"""Rows per second parsed: tf_fm.data readers vs pandas, on the same files.

Builds ~1M-row files in a temporary folder from the real samples in
../shared/data (Criteo DAC TSV repeated 139 times, iPinYou libFM repeated 38
times), then times, in the same process and alternating runs:

* `tf_fm.data.read_criteo` / `read_libsvm`: every batch pulled through
  the dataset (iteration in Python, as `model.fit` would);
* `pandas.read_csv` on the same file (`sep="\\t"` for Criteo). For libFM,
  `sep=" "` reads the 17 raw tokens per row without splitting `idx:val`
  (less work than the reader); the same plus `str.split(":")` into id and
  value arrays does the reader's work (run once: it is slow);
* `sklearn.datasets.load_svmlight_file` for libFM when scikit-learn is
  installed.

Each timing is the best of `--repeat` runs (the machine may be shared);
CPU seconds are the process's user+sys time over the same run.

    python benchmarks/input_pipeline.py [--repeat 3] [--batch-size 4096]
"""

import argparse
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_fm  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("TF_FM_SHARED_DATA", REPO.parent / "shared" / "data"))


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def repeat_file(source, target, copies):
    with open(source, "rb") as f:
        content = f.read()
    with open(target, "wb") as f:
        for _ in range(copies):
            f.write(content)
    return content.count(b"\n") * copies


PANDAS_LIBFM = 'pandas.read_csv(sep=" ") + str.split(":") to ids, values'


def pandas_libfm(path):
    """What the libFM reader does, in pandas: ids and values arrays (16 entries a row)."""
    frame = pd.read_csv(path, sep=" ", header=None)
    tokens = pd.Series(frame.iloc[:, 1:].to_numpy().ravel().astype(str))
    parts = tokens.str.split(":", n=1, expand=True)
    ids = parts[0].astype(np.int64).to_numpy().reshape(len(frame), -1)
    values = parts[1].astype(np.float32).to_numpy().reshape(len(frame), -1)
    assert ids.shape == values.shape
    return len(frame)


def drain(dataset):
    rows = 0
    for _, label in dataset:
        rows += int(label.shape[0])
    return rows


def timed(run):
    start, cpu = time.perf_counter(), cpu_seconds()
    rows = run()
    return rows, time.perf_counter() - start, cpu_seconds() - cpu


def best_of(runs, repeat, once=()):
    """Best wall time of each named run over `repeat` alternating rounds."""
    best = {}
    for round_ in range(repeat):
        for name, run in runs.items():
            if name in once and round_ > 0:
                continue
            rows, wall, cpu = timed(run)
            if name not in best or wall < best[name][1]:
                best[name] = (rows, wall, cpu)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    criteo = SHARED / "criteo_widresdnn_sample" / "train.csv"
    ipinyou = SHARED / "ipinyou_deepctr_sample" / "train.fm.txt"
    if not criteo.exists() or not ipinyou.exists():
        sys.exit(f"The data samples are not in {SHARED} (set TF_FM_SHARED_DATA).")

    folder = pathlib.Path(tempfile.mkdtemp(prefix="tf_fm_bench_"))
    try:
        criteo_file = folder / "criteo_1m.tsv"
        libfm_file = folder / "ipinyou_1m.fm.txt"
        criteo_rows = repeat_file(criteo, criteo_file, 139)
        libfm_rows = repeat_file(ipinyou, libfm_file, 38)
        batch = args.batch_size

        results = []
        runs = {
            "tf_fm.data.read_criteo": lambda: drain(
                tf_fm.data.read_criteo(criteo_file, batch_size=batch)
            ),
            "tf_fm.data.read_criteo, shuffle_buffer=100k": lambda: drain(
                tf_fm.data.read_criteo(
                    criteo_file, batch_size=batch, shuffle_buffer=100_000, seed=0
                )
            ),
            'pandas.read_csv(sep="\\t")': lambda: len(
                pd.read_csv(criteo_file, sep="\t", header=None)
            ),
        }
        for name, value in best_of(runs, args.repeat).items():
            results.append(("Criteo DAC TSV", name, *value))

        runs = {
            "tf_fm.data.read_libsvm": lambda: drain(
                tf_fm.data.read_libsvm(libfm_file, max_length=16, batch_size=batch)
            ),
            'pandas.read_csv(sep=" "), raw tokens only': lambda: len(
                pd.read_csv(libfm_file, sep=" ", header=None)
            ),
            PANDAS_LIBFM: lambda: pandas_libfm(libfm_file),
        }
        try:
            from sklearn.datasets import load_svmlight_file

            runs["sklearn load_svmlight_file"] = lambda: load_svmlight_file(
                str(libfm_file), zero_based=True
            )[0].shape[0]
        except ImportError:
            pass
        once = {PANDAS_LIBFM, "sklearn load_svmlight_file"}
        for name, value in best_of(runs, args.repeat, once).items():
            results.append(("iPinYou libFM", name, *value))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    expected = {"Criteo DAC TSV": criteo_rows, "iPinYou libFM": libfm_rows}
    print(
        f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__}, pandas {pd.__version__}, "
        f"batch_size={batch}, best of {args.repeat}\n"
    )
    print("| input | reader | rows | seconds | CPU seconds | rows/s | vs pandas |")
    print("|---|---|---:|---:|---:|---:|---:|")
    pandas_rate = {}
    for data_name, name, rows, wall, _ in results:
        if name.startswith("pandas") and data_name not in pandas_rate:
            pandas_rate[data_name] = rows / wall
    for data_name, name, rows, wall, cpu in results:
        if rows != expected[data_name]:
            sys.exit(f"{name} read {rows} rows of {data_name}, expected {expected[data_name]}.")
        rate = rows / wall
        print(
            f"| {data_name} | {name} | {rows:,} | {wall:.2f} | {cpu:.2f} | {rate:,.0f} | "
            f"{rate / pandas_rate[data_name]:.2f}x |"
        )


if __name__ == "__main__":
    main()
