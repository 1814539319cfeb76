"""Training beyond one process with `tf.distribute`: the cluster, the launcher, the loop.

Keras 3 `model.fit` does not run under `MultiWorkerMirroredStrategy` (keras
issue 20585) nor under `ParameterServerStrategy`, so tf_fm owns a custom
loop (`strategy.run` + `GradientTape` + the model's compiled optimizer) with
the callbacks semantics of `tf_fm.train`'s single-process `fit`.

Modules and the interface between them (the parameter-server path,
`parameter_server.py` and `server.py`, plugs into it):

* `cluster`: `parse_cluster(text) -> Cluster` for `--cluster` values
  `"local:W"` (W synchronous workers), `"local:W,P"` (W workers, P parameter
  servers and a chief that coordinates) and `"tf_config"` (this process is
  one task of a cluster described by the `TF_CONFIG` environment variable);
  `read_tf_config()`, `tf_configs(workers, parameter_servers, ports)` (one
  TF_CONFIG per local process), `free_ports(n)`, `is_chief(config)`,
  `runs_server(config)` (a `worker`/`ps` task of a parameter-server cluster:
  it serves, it does not train), `make_strategy(config)`:
  `MultiWorkerMirroredStrategy` when the cluster has no `ps` task, else
  `parameter_server.make_strategy(config)`.
* `launch`: `launch_local(argv, workers=W, parameter_servers=P, log=print)
  -> exit code`. Starts the processes on free loopback ports, each with its
  own `TF_CONFIG`, in its own process group, and streams their output line
  by line prefixed `[worker 0]`, `[chief]`, `[ps 1]`. With P == 0 every
  worker runs `argv` (the training command, e.g. `[python, -m, tf_fm.cli,
  train, ..., --cluster, tf_config]`). With P > 0 the `chief` runs `argv`
  and every `worker` and `ps` task runs `python -m tf_fm.distributed.server`
  (a process that starts `tf.distribute.Server` from TF_CONFIG and joins).
  It stops all of them when the training processes have exited, as soon as
  one process fails, and on SIGINT / SIGTERM (SIGINT to each group, SIGKILL
  after a grace period): no orphans.
* `loop`: `fit(build_model, train_dataset_fn, valid_dataset_fn, *, strategy,
  settings, out, checkpoint_dir, resuming, task, log) -> (model, history)`.

  - `build_model()`: returns the compiled model (`ModelOptions.build`);
    `fit` calls it inside `strategy.scope()`, so the strategy owns the
    variables, and once more outside any strategy for the returned model.
  - `train_dataset_fn(input_context)` / `valid_dataset_fn(input_context)`
    (or None): `tf.data.Dataset` of `(features, label)` batches of this
    input pipeline (see `loop.shard_files`): `fit` passes them to
    `strategy.distribute_datasets_from_function`.
  - `settings`: `tf_fm.training.TrainSettings` (`epochs`, `batch_size` = the
    GLOBAL batch, `patience`, `seed`).
  - `out`: the directory this process writes its `history.json` to (the run
    directory on the chief, a scratch directory on the other workers).
  - `checkpoint_dir`: the run's checkpoint directory on shared storage:
    written by the chief only after every epoch, read by every process when
    `resuming`.
  - returns a model built outside any strategy holding the trained weights
    (the best epoch's with validation data) and the whole run's per-epoch
    history (`tf_fm.training.EpochLog`'s content). Only this model is saved
    or exported.

  `loop.fit` dispatches to `parameter_server.fit(...)` (same signature) when
  `strategy` is a `tf.distribute.experimental.ParameterServerStrategy`.

Global batch semantics (synchronous): `batch_size` is the global batch. Each
step every one of the W workers computes the gradient of
`sum(loss over its rows) / (rows of the global batch)` (+ its share of the
regularization), and the all-reduce sums them: the update is the one of the
global-batch mean, as one process with `batch_size` rows would make. Input is
sharded by files when there are at least as many files as workers (worker i
reads files i, i+W, ... in batches of `batch_size / W`) and by data otherwise
(every worker reads every file in the same order in global batches and keeps
its `1/W` slice of each).
"""
