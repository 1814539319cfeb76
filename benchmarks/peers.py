"""Training throughput of one FM step: tf_fm against peer libraries, side by side.

The step: 26 categorical fields (no numeric ones, so every peer runs the same
network), table rows split evenly over the fields, factor k = 16 plus a
first-order weight per row, pairwise term 0.5 * ((sum v)^2 - sum v^2) summed
over k, a global bias, binary cross-entropy, batch 4096. Ids are Zipf(1.2) per
field (`--ids uniform` for uniform ids), on 16 pre-built in-memory batches
cycled. Examples/s are measured over the steps after a warm-up for `--seconds`
timed seconds; peak RSS is the process's VmHWM.

Setups, each run in its own subprocess (its own interpreter, its own peak
memory), never two at once, alternating: every setup at the first table size,
then every setup at the next, `--repeats` times; the table shows the median.

* `tf_fm_lazyadam`: `tf_fm.FM` + `tf_fm.compile_model` (LazyAdam), `model.fit`.
* `tf_fm_rowwise`: the same with `embedding_optimizer="rowwise_adagrad"`.
* `stock_keras`: `keras.layers.Embedding` (one fused table with offsets) +
  `keras.optimizers.Adam`, `model.fit`.
* `torch_sparse_adam`: PyTorch `nn.Embedding(sparse=True)` (factors and
  first-order weights) + `torch.optim.SparseAdam` (dense Adam on the bias).
* `fbgemm_tbe_rowwise`: FBGEMM's `SplitTableBatchedEmbeddingBagsCodegen` on CPU
  (26 tables, SUM pooling of one id per bag) with its fused
  EXACT_ROWWISE_ADAGRAD update in the backward pass (dense Adam on the bias).
  The CPU kernel needs a row width that is a multiple of 4, so each row holds
  v (16), w (1) and 3 unused zero columns: 20 floats.
* `fbgemm_tbe_adam`: the same with FBGEMM's Adam (the row says if the CPU
  kernel refuses it).

Differences that remain: tf_fm's `FM` keeps its default L2 (1e-5) on the rows a
batch uses; the others have none. Every setup is limited to 2 threads.

The peers are not dependencies of the package. `--install` creates their
environment at `--torch-python`'s venv; by hand that is:

    python3 -m venv /work/peers_venvs/torch
    /work/peers_venvs/torch/bin/pip install \\
        /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl numpy
    /work/peers_venvs/torch/bin/pip install fbgemm-gpu-cpu==1.8.0

(fbgemm-gpu-cpu 1.9.0 and 1.7.0 fail to load their .so files against torch
2.13.) A setup whose interpreter or import is missing gets a "not installed"
row. TF setups run under `--tf-python` (defaults to this interpreter).

`--check`: each setup loads one shared seed-0 table (an .npz file) and computes
the logits of one 64-row batch; they must match a numpy FM within 1e-4.

Usage:
    python benchmarks/peers.py --install          # once: the peers' own venv
    python benchmarks/peers.py --check
    python benchmarks/peers.py --repeats 2 --out benchmarks/peers.md
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_throughput import make_batches, peak_rss_bytes  # noqa: E402

N_FIELDS = 26
K = 16
BATCH = 4096
N_BATCHES = 16
WARMUP = 2
CHECK_SIZE = 50  # rows per field of the --check table
CHECK_ROWS = 64
TOLERANCE = 1e-4
TF_SETUPS = ("tf_fm_lazyadam", "tf_fm_rowwise", "stock_keras")
TORCH_SETUPS = ("torch_sparse_adam", "fbgemm_tbe_rowwise", "fbgemm_tbe_adam")
TORCH_WHEEL = "/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
PEER_PACKAGES = ("numpy", "fbgemm-gpu-cpu==1.8.0")  # 1.9.0 / 1.7.0 do not load with torch 2.13
THREAD_ENV = {"OMP_NUM_THREADS": "2", "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}


# ---------------------------------------------------------------- data


def batches(config):
    """(ids, labels): ids (N_BATCHES, BATCH, 26) int64 per-field ids, labels (N_BATCHES, BATCH)."""
    import numpy as np

    features, labels, size, distinct = make_batches(
        int(config["rows"]), BATCH, N_BATCHES, config["ids"]
    )
    ids = np.stack([features[f"C{i + 1}"] for i in range(N_FIELDS)], axis=1)
    return ids.reshape(N_BATCHES, BATCH, N_FIELDS), labels.reshape(N_BATCHES, BATCH), size, distinct


def write_check_params(path):
    """Seed-0 table (rows, k + 1: v then w), bias and a 64-row id batch."""
    import numpy as np

    rng = np.random.default_rng(0)
    table = rng.normal(0, 0.1, (N_FIELDS * CHECK_SIZE, K + 1)).astype("float32")
    ids = rng.integers(0, CHECK_SIZE, (CHECK_ROWS, N_FIELDS)).astype("int64")
    np.savez(path, table=table, bias=np.float32(0.1), ids=ids)


def numpy_logits(path):
    import numpy as np

    p = np.load(path)
    rows = p["table"][p["ids"] + np.arange(N_FIELDS) * CHECK_SIZE].astype("float64")
    v, w = rows[..., :K], rows[..., K]
    s = v.sum(axis=1)
    pairwise = 0.5 * (s * s - (v * v).sum(axis=1)).sum(axis=1)
    return w.sum(axis=1) + pairwise + float(p["bias"])


# ---------------------------------------------------------------- TF setups


def stock_fm(size):
    """The FM on keras.layers.Embedding: one fused table with per-field offsets."""
    import keras
    from keras import ops

    import tf_fm

    names = [f"C{i + 1}" for i in range(N_FIELDS)]
    inputs = {n: keras.Input(shape=(), dtype="int64", name=n) for n in names}
    offsets = ops.array([i * size for i in range(N_FIELDS)], "int64")
    ids = ops.stack([inputs[n] for n in names], axis=1) + offsets
    init = keras.initializers.RandomNormal(stddev=0.01)
    v = keras.layers.Embedding(size * N_FIELDS, K, embeddings_initializer=init, name="v")(ids)
    w = keras.layers.Embedding(size * N_FIELDS, 1, embeddings_initializer="zeros", name="w")(ids)
    linear = ops.sum(w[..., 0], axis=1, keepdims=True)
    logit = tf_fm.GlobalBias(name="logit")([linear, tf_fm.FMInteraction()(v)])
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(logit))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model


def tf_model(setup, size):
    import tf_fm

    if setup == "stock_keras":
        return stock_fm(size)
    fields = [
        tf_fm.CategoricalFeature(f"C{i + 1}", encoding="integer", num_ids=size)
        for i in range(N_FIELDS)
    ]
    optimizer = "rowwise_adagrad" if setup == "tf_fm_rowwise" else "lazy_adam"
    model = tf_fm.FM(fields, embedding_dim=K)
    return tf_fm.compile_model(
        model, learning_rate=1e-3, metrics=False, embedding_optimizer=optimizer
    )


def tf_load(model, setup, params):
    table, bias = params["table"], params["bias"]
    if setup == "stock_keras":
        model.get_layer("v").embeddings.assign(table[:, :K])
        model.get_layer("w").embeddings.assign(table[:, K:])
    else:
        model.get_layer("field_embedding").set_table(table[:, :K], table[:, K])
    model.get_layer("logit").weights[0].assign(bias)


def tf_check(config):
    import keras
    import numpy as np

    params = np.load(config["params"])
    model = tf_model(config["setup"], CHECK_SIZE)
    tf_load(model, config["setup"], params)
    logit = keras.Model(model.inputs, model.get_layer("logit").output)
    x = {f"C{i + 1}": params["ids"][:, i] for i in range(N_FIELDS)}
    return {"logits": np.ravel(logit.predict(x, verbose=0)).tolist()}


def tf_train(config):
    import keras
    import tensorflow as tf

    ids, labels, size, distinct = batches(config)
    keras.utils.set_random_seed(0)
    model = tf_model(config["setup"], size)
    x = {f"C{i + 1}": ids[..., i] for i in range(N_FIELDS)}
    data = tf.data.Dataset.from_tensor_slices((x, labels)).repeat()
    times = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter())
            if len(times) > WARMUP + 2 and times[-1] - times[WARMUP] > config["seconds"]:
                self.model.stop_training = True

    model.fit(data, steps_per_epoch=10**6, epochs=1, verbose=0, callbacks=[Clock()])
    return timing(times, distinct)


def run_tf(config):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    return tf_check(config) if config.get("params") else tf_train(config)


# ---------------------------------------------------------------- torch setups


def torch_sparse_adam(torch, size):
    """nn.Embedding(sparse=True) on one fused table + SparseAdam: (lookup, load, optimizers)."""
    v = torch.nn.Embedding(size * N_FIELDS, K, sparse=True)
    w = torch.nn.Embedding(size * N_FIELDS, 1, sparse=True)
    torch.nn.init.normal_(v.weight, std=0.01)
    torch.nn.init.zeros_(w.weight)
    offsets = torch.arange(N_FIELDS) * size

    def lookup(ids):
        rows = ids + offsets
        return v(rows), w(rows)[..., 0]

    def load(table):
        with torch.no_grad():
            v.weight.copy_(table[:, :K])
            w.weight.copy_(table[:, K:])

    optimizer = torch.optim.SparseAdam(list(v.parameters()) + list(w.parameters()), lr=1e-3)
    return lookup, load, [optimizer]


def fbgemm_tbe(torch, size, optim_name):
    """FBGEMM's TBE on CPU, 26 tables of rows (v, w, 3 zero columns), fused optimizer."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
        EmbeddingLocation,
        PoolingMode,
    )
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    width = K + 4  # a multiple of 4, as the CPU kernel requires
    spec = (size, width, EmbeddingLocation.HOST, ComputeDevice.CPU)
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [spec] * N_FIELDS,
        optimizer=getattr(EmbOptimType, optim_name),
        learning_rate=1e-2 if optim_name == "EXACT_ROWWISE_ADAGRAD" else 1e-3,
        pooling_mode=PoolingMode.SUM,
        device="cpu",
    )
    for t in tbe.split_embedding_weights():
        t[:, K:] = 0.0

    def lookup(ids):
        batch = ids.shape[0]
        indices = ids.t().reshape(-1)  # table-major: bag t * batch + b
        bags = torch.arange(N_FIELDS * batch + 1)
        out = tbe(indices, bags).view(batch, N_FIELDS, width)
        return out[..., :K], out[..., K]

    def load(table):
        for i, t in enumerate(tbe.split_embedding_weights()):
            t[:, : K + 1] = table[i * size : (i + 1) * size]

    return lookup, load, []


def torch_setup(torch, setup, size):
    if setup == "torch_sparse_adam":
        return torch_sparse_adam(torch, size)
    optim_name = "ADAM" if setup == "fbgemm_tbe_adam" else "EXACT_ROWWISE_ADAGRAD"
    return fbgemm_tbe(torch, size, optim_name)


def torch_logit(lookup, bias, ids):
    v, w = lookup(ids)
    s = v.sum(dim=1)
    pairwise = 0.5 * (s * s - (v * v).sum(dim=1)).sum(dim=1)
    return w.sum(dim=1) + pairwise + bias


def torch_check(torch, config):
    import numpy as np

    params = np.load(config["params"])
    lookup, load, _ = torch_setup(torch, config["setup"], CHECK_SIZE)
    load(torch.from_numpy(params["table"]))
    with torch.no_grad():
        logits = torch_logit(lookup, float(params["bias"]), torch.from_numpy(params["ids"]))
    return {"logits": logits.double().numpy().tolist()}


def torch_train(torch, config):
    ids, labels, size, distinct = batches(config)
    torch.manual_seed(0)
    lookup, _, optimizers = torch_setup(torch, config["setup"], size)
    bias = torch.zeros((), requires_grad=True)
    optimizers.append(torch.optim.Adam([bias], lr=1e-3))
    ids, labels = torch.from_numpy(ids), torch.from_numpy(labels)
    times = []
    step = 0
    while len(times) <= WARMUP + 2 or times[-1] - times[WARMUP] <= config["seconds"]:
        for opt in optimizers:
            opt.zero_grad()
        b = step % N_BATCHES
        logit = torch_logit(lookup, bias, ids[b])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, labels[b])
        loss.backward()
        for opt in optimizers:
            opt.step()
        times.append(time.perf_counter())
        step += 1
    return timing(times, distinct)


def run_torch(config):
    import torch

    torch.set_num_threads(2)
    if config["setup"].startswith("fbgemm"):
        import fbgemm_gpu  # noqa: F401
    return torch_check(torch, config) if config.get("params") else torch_train(torch, config)


# ---------------------------------------------------------------- one run


def timing(times, distinct):
    steps = len(times) - 1 - WARMUP
    step_s = (times[-1] - times[WARMUP]) / steps
    return {
        "steps": steps,
        "step_ms": step_s * 1000,
        "examples_per_s": BATCH / step_s,
        "distinct_rows_per_batch": float(distinct),
        "peak_rss_gb": peak_rss_bytes() / 2**30,
        "load_1min": os.getloadavg()[0],  # this run's own ~2 plus any other work
    }


def run_one(config):
    """In the subprocess: the run's result, or {"skipped": reason}."""
    run = run_tf if config["setup"] in TF_SETUPS else run_torch
    try:
        return {**config, **run(config)}
    except (ImportError, OSError) as e:
        return {**config, "skipped": f"not installed: {type(e).__name__}: {e}"[:200]}
    except Exception as e:  # a peer refusing the configuration, e.g. an optimizer on CPU
        return {**config, "skipped": f"failed: {type(e).__name__}: {e}"[:200]}


def spawn(config, python):
    """Run one configuration in its own interpreter; returns its result dict."""
    if not os.path.exists(python):
        return {**config, "skipped": f"not installed: no interpreter {python}"}
    env = {**os.environ, **THREAD_ENV}
    proc = subprocess.run(
        [python, os.path.abspath(__file__), "--one", json.dumps(config)],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**config, "skipped": f"failed (exit {proc.returncode}): {tail}"[:200]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- parent


def python_for(setup, args):
    return args.tf_python if setup in TF_SETUPS else args.torch_python


def check(args):
    """Every setup's logits on a shared seed-0 table against numpy; returns the report lines."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "check_params.npz")
        write_check_params(path)
        reference = numpy_logits(path)
        lines = []
        for setup in args.setups:
            r = spawn({"setup": setup, "params": path}, python_for(setup, args))
            if "skipped" in r:
                lines.append(f"{setup}: {r['skipped']}")
                continue
            err = float(np.max(np.abs(np.asarray(r["logits"]) - reference)))
            verdict = "OK" if err <= TOLERANCE else "MISMATCH"
            lines.append(f"{setup}: {verdict}, max |logit - numpy| = {err:.2e}")
    return lines


def benchmark(args):
    results = []
    for repeat in range(args.repeats):
        for rows in args.rows:
            for setup in args.setups:
                config = {"setup": setup, "rows": rows, "ids": args.ids, "seconds": args.seconds}
                r = spawn(config, python_for(setup, args))
                results.append(r)
                print(f"repeat {repeat + 1} rows {rows:8.2g} {setup:20s} {brief(r)}", flush=True)
    return results


def brief(r):
    if "skipped" in r:
        return r["skipped"]
    speed = f"{r['examples_per_s']:10,.0f} ex/s  step {r['step_ms']:7.1f} ms"
    return f"{speed}  peak {r['peak_rss_gb']:.2f} GB  load {r['load_1min']:.1f}"


def cell(runs):
    """Median examples/s (the runs), largest peak RSS and load, or why there is none."""
    done = [r for r in runs if "skipped" not in r]
    if not done:
        return runs[0]["skipped"] if runs else "-", "-", "-"
    rates = [r["examples_per_s"] for r in done]
    each = " / ".join(f"{x:,.0f}" for x in rates)
    speed = f"{statistics.median(rates):,.0f} ({each})"
    load = max(r["load_1min"] for r in done)
    return speed, f"{max(r['peak_rss_gb'] for r in done):.2f}", f"{load:.1f}"


def markdown(results, args):
    header = ["setup"]
    for rows in args.rows:
        header += [f"ex/s at {rows:.2g} rows", f"peak GB at {rows:.2g}", "max load"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for setup in args.setups:
        cells = [setup]
        for rows in args.rows:
            cells += cell([r for r in results if r["setup"] == setup and r["rows"] == rows])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def install(torch_python):
    """Creates the peers' venv (the one `torch_python` lives in) with torch and FBGEMM."""
    venv = os.path.dirname(os.path.dirname(torch_python))
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    torch = TORCH_WHEEL if os.path.isfile(TORCH_WHEEL) else "torch==2.13.0"
    pip = [torch_python, "-m", "pip", "install", "--quiet"]
    subprocess.run(
        pip + ["--index-url", "https://download.pytorch.org/whl/cpu", torch]
        if torch.startswith("torch==")
        else pip + [torch],
        check=True,
    )
    subprocess.run(pip + list(PEER_PACKAGES), check=True)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", nargs="+", type=float, default=[1e6, 2.6e7])
    parser.add_argument("--setups", nargs="+", default=list(TF_SETUPS + TORCH_SETUPS))
    parser.add_argument("--ids", default="zipf", choices=["zipf", "uniform"])
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per run")
    parser.add_argument("--repeats", type=int, default=1, help="alternating passes; median")
    parser.add_argument("--tf-python", default=sys.executable)
    parser.add_argument("--torch-python", default="/work/peers_venvs/torch/bin/python")
    parser.add_argument("--check", action="store_true", help="logits vs numpy, no timing")
    parser.add_argument("--install", action="store_true", help="create the peers' venv")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    if args.install:
        install(args.torch_python)
        return
    if args.check:
        lines = check(args)
        print("\n".join(lines))
        if any("MISMATCH" in line for line in lines):
            raise SystemExit(1)
        return
    results = benchmark(args)
    table = markdown(results, args)
    print("\n" + table)
    if args.out:
        write_report(args.out, table, results, args)


def write_report(path, table, results, args):
    command = "python benchmarks/peers.py " + " ".join(sys.argv[1:])
    distinct = {r["rows"]: r["distinct_rows_per_batch"] for r in results if "skipped" not in r}
    rows_note = ", ".join(f"{rows:.2g} rows: {d:,.0f}" for rows, d in sorted(distinct.items()))
    with open(path, "w") as f:
        f.write(f"Command: `{command}`\n\n")
        f.write(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n")
        f.write(
            f"FM step, 26 categorical fields, k = {K}, batch {BATCH}, ids {args.ids}; "
            f"{args.seconds:g} timed s per run, {args.repeats} alternating pass(es); "
            "examples/s median (each pass); peak RSS of the run's own process; "
            "max load: the largest 1-min load average at the end of a run (a run "
            "alone on the 2 cores is about 2; more means other work shared them). "
            f"Distinct rows per batch: {rows_note}. 2 threads per setup.\n\n"
        )
        f.write(table + "\n")


if __name__ == "__main__":
    main()
