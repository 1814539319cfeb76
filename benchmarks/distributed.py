"""Distributed training on one machine: examples/s and loopback bytes per step, side by side.

Three setups of the same FM training step (`tf_fm.distributed.loop.fit`, the
loop `tf-fm train --cluster` runs), one after another in one invocation:

* `1 process`: the loop under the default strategy;
* `2 sync workers`: two processes under `MultiWorkerMirroredStrategy`, each
  with half of every global batch (the all-reduce of the table's
  IndexedSlices gathers both workers' rows);
* `2 workers + 2 ps`: a chief, two workers and two parameter servers under
  `ParameterServerStrategy`, the table split by rows over the servers
  (`tf_fm.distributed.parameter_server`).

26 categorical fields (table rows split evenly, Zipf(1.2) ids) + 13 numeric
fields, k = 16, LazyAdam, global batch 4096, as `train_throughput.py`. Each
run trains 3 epochs of `--batches` in-memory batches; the figures are the
third epoch's (the first traces the step; under MWMS the second still paid
about 10 s of one-off collective setup): its seconds, and the bytes that
crossed the loopback interface during it (`/proc/net/dev`, `lo`; every
process of the setup talks over it, nothing else on this machine does),
divided by the steps. The epoch's checkpoint is written after the
measurement. This machine has 2 cores: every setup shares them, so the
absolute examples/s of the distributed setups measure the overhead of the
protocol, not a speed-up; the traffic is what a real cluster would carry.

Usage:
    python benchmarks/distributed.py --out benchmarks/distributed.md
    python benchmarks/distributed.py --rows 1e6 --setups one sync
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
SETUPS = {"one": "1 process", "sync": "2 sync workers", "ps": "2 workers + 2 ps"}
TIMEOUT = 1800  # seconds a setup may take before it is stopped


def loopback_bytes() -> int:
    """Bytes received on `lo` so far (each loopback byte is received once)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[0])
    raise RuntimeError("no loopback interface in /proc/net/dev")


def _batches(config):
    """The run's global batches in memory: `(features, labels)` shaped `(batches, rows, ...)`."""
    sys.path.insert(0, str(HERE))
    from train_throughput import make_batches

    n, batch = config["batches"], config["batch"]
    features, labels, size, distinct = make_batches(config["rows"], batch, n, "zipf")
    shaped = {k: v.reshape((n, batch) + v.shape[1:]) for k, v in features.items()}
    return shaped, labels.reshape(n, batch), size, distinct


def _dataset_fn(features, labels, workers):
    """`InputContext -> Dataset`: pipeline i gets its `1/workers` share of every global batch."""
    import tensorflow as tf

    def dataset_fn(context):
        share = labels.shape[1] // workers
        part = slice(context.input_pipeline_id * share, (context.input_pipeline_id + 1) * share)
        sliced = {k: v[:, part] for k, v in features.items()}
        return tf.data.Dataset.from_tensor_slices((sliced, labels[:, part]))

    return dataset_fn


def task_main(config_path):
    """One process of a setup: trains, and the chief writes the measured epoch to `result.json`."""
    import keras
    import tensorflow as tf

    import tf_fm
    from tf_fm import training
    from tf_fm.distributed import cluster as cluster_lib
    from tf_fm.distributed import loop

    config = json.loads(pathlib.Path(config_path).read_text())
    tf_config = cluster_lib.read_tf_config() if os.environ.get("TF_CONFIG") else None
    strategy = cluster_lib.make_strategy(tf_config) if tf_config else tf.distribute.get_strategy()
    chief = tf_config is None or cluster_lib.is_chief(tf_config)
    features, labels, size, distinct = _batches(config)
    fields = [
        tf_fm.CategoricalFeature(name, encoding="integer", num_ids=size)
        for name in features
        if name.startswith("C")
    ] + [tf_fm.NumericFeature(name) for name in features if name.startswith("I")]
    options = training.ModelOptions(model="fm", embedding_dim=16, optimizer=config["optimizer"])
    epochs = []

    class Meter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.began, self.bytes = time.monotonic(), loopback_bytes()

        def on_epoch_end(self, epoch, logs=None):
            epochs.append((time.monotonic() - self.began, loopback_bytes() - self.bytes))

    keras.utils.set_random_seed(0)
    workers = 2 if config["setup"] == "sync" else 1
    out = pathlib.Path(config["out"])
    loop.fit(
        lambda: options.build(fields, "binary"),
        _dataset_fn(features, labels, workers),
        None,
        strategy=strategy,
        settings=training.TrainSettings(epochs=3, batch_size=config["batch"]),
        out=out if chief else tempfile.mkdtemp(),
        checkpoint_dir=out / "checkpoints",
        resuming=False,
        task="binary",
        log=lambda line: print(line, flush=True),
        callbacks=[Meter()],
    )
    if chief:
        seconds, traffic = epochs[-1]
        result = {"seconds": seconds, "bytes": traffic, "distinct_rows_per_batch": distinct}
        (out / "result.json").write_text(json.dumps(result))


def _environment(tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _processes(setup, config_path):
    """`(name, command, TF_CONFIG or None)` of every process of `setup`; the chief's first."""
    from tf_fm.distributed import cluster as cluster_lib

    task = [sys.executable, __file__, "--task", str(config_path)]
    server = [sys.executable, "-m", "tf_fm.distributed.server"]
    if setup == "one":
        return [("chief", task, None)]
    workers, servers = (2, 0) if setup == "sync" else (2, 2)
    count = workers + servers + (1 if servers else 0)  # and the chief, with servers
    configs = cluster_lib.tf_configs(workers, servers, cluster_lib.free_ports(count))
    chief_name = "worker 0" if setup == "sync" else "chief"
    ordered = sorted(configs, key=lambda item: item[0] != chief_name)
    return [
        (name, task if setup == "sync" or name == "chief" else server, config)
        for name, config in ordered
    ]


def run_setup(setup, rows, args):
    """Runs one setup in its own processes; its measured epoch as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "setup": setup,
            "rows": int(rows),
            "batch": args.batch,
            "batches": args.batches,
            "optimizer": args.optimizer,
            "out": tmp,
        }
        config_path = pathlib.Path(tmp) / "config.json"
        config_path.write_text(json.dumps(config))
        logs = pathlib.Path(tmp) / "logs.txt"
        with open(logs, "wb") as log:
            started = [
                subprocess.Popen(command, env=_environment(tf_config), stdout=log, stderr=log)
                for _, command, tf_config in _processes(setup, config_path)
            ]
            try:
                code = started[0].wait(timeout=TIMEOUT)
            finally:
                for process in started:
                    process.kill()
                    process.wait()
        result_path = pathlib.Path(tmp) / "result.json"
        if code != 0 or not result_path.is_file():
            kept = pathlib.Path(tempfile.gettempdir()) / f"distributed-{setup}-{rows:.0e}.log"
            shutil.copy(logs, kept)
            refusals = [
                line
                for line in logs.read_text(errors="replace").splitlines()
                if "UsageError" in line
            ]
            reason = refusals[-1] if refusals else f"exit {code}, log {kept}"
            return {"setup": setup, "rows": int(rows), "failed": reason}
        result = json.loads(result_path.read_text())
    steps = args.batches
    return {
        **result,
        "setup": setup,
        "rows": int(rows),
        "examples_per_s": steps * args.batch / result["seconds"],
        "bytes_per_step": result["bytes"] / steps,
    }


def markdown(results, args):
    lines = [
        f"FM, k = 16, {args.optimizer}, global batch {args.batch}, {args.batches} steps "
        "per epoch, the third epoch; loopback bytes of all processes per step.",
        "",
        "| table rows | setup | examples/s | vs 1 process | loopback MB / step |",
        "|---|---|---|---|---|",
    ]
    for rows in sorted({r["rows"] for r in results}):
        group = [r for r in results if r["rows"] == rows]
        base = next(
            (r["examples_per_s"] for r in group if r["setup"] == "one" and "failed" not in r), None
        )
        for r in group:
            if "failed" in r:
                lines.append(f"| {rows:.2g} | {SETUPS[r['setup']]} | failed: {r['failed']} | | |")
                continue
            ratio = f"{r['examples_per_s'] / base:.2f}x" if base else "-"
            lines.append(
                f"| {rows:.2g} | {SETUPS[r['setup']]} | {r['examples_per_s']:,.0f} | {ratio} "
                f"| {r['bytes_per_step'] / 1e6:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", nargs="+", type=float, default=[1e6, 2.6e7])
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=24, help="steps per epoch")
    parser.add_argument("--optimizer", default="lazy_adam")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        task_main(args.task)
        return
    results = []
    for rows in args.rows:
        for setup in args.setups:
            results.append(run_setup(setup, rows, args))
            print(json.dumps(results[-1]), flush=True)
    table = markdown(results, args)
    print(table)
    if args.out:
        pathlib.Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
