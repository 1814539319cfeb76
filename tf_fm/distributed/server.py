"""A worker or parameter-server task of a `ParameterServerStrategy` cluster.

`python -m tf_fm.distributed.server` reads `TF_CONFIG` (the cluster and this
process's `task`), starts a `tf.distribute.Server` for a `worker` or `ps`
task and serves until it is killed. The coordinator (the `chief` task)
runs the training loop (`tf_fm.distributed.parameter_server.fit`) and sends
these tasks the work: workers run the scheduled steps, parameter servers hold
the variables (the shards of the embedding tables among them).

The server's session config sets `inter_op_parallelism_threads` (at least 4):
with fewer, a server on a 2-core machine can deadlock while it runs a step
and serves variable reads at the same time.

Example (one process per task; the launcher does this on one machine):

    TF_CONFIG='{"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222"],
                "ps": ["host2:2222"]}, "task": {"type": "ps", "index": 0}}' \\
        python -m tf_fm.distributed.server
"""

import json
import os
import sys

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

SERVER_TASKS = ("worker", "ps")
# Threads a server runs ops on; fewer than 4 can deadlock on 2 cores.
INTER_OP_THREADS = 4


def server_config() -> config_pb2.ConfigProto:
    """The session config of a worker or parameter server (see the module docstring)."""
    threads = max(INTER_OP_THREADS, os.cpu_count() or 1)
    return config_pb2.ConfigProto(inter_op_parallelism_threads=threads)


def read_tf_config(environ=None) -> tuple[dict, str, int]:
    """`(cluster, task type, task index)` from `TF_CONFIG`; a clear error when it is unusable."""
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG")
    if not text:
        raise ValueError("TF_CONFIG is not set: it names the cluster and this process's task")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"TF_CONFIG is not a valid cluster config ({error!r}): {text}") from None
    if kind not in cluster or index >= len(cluster[kind]):
        raise ValueError(f"TF_CONFIG: task {kind}:{index} is not in the cluster {cluster}")
    return cluster, kind, index


def start_server(environ=None) -> tf.distribute.Server:
    """Starts this process's `worker` or `ps` server from `TF_CONFIG` (see `read_tf_config`)."""
    cluster, kind, index = read_tf_config(environ)
    if kind not in SERVER_TASKS:
        raise ValueError(
            f"TF_CONFIG: task type {kind!r} runs no server here; expected one of {SERVER_TASKS} "
            "(the chief runs the training loop)"
        )
    return tf.distribute.Server(
        tf.train.ClusterSpec(cluster),
        job_name=kind,
        task_index=index,
        protocol="grpc",
        config=server_config(),
        start=True,
    )


def main(argv=None) -> int:
    """Starts the server and serves until the process is killed."""
    del argv
    try:
        server = start_server()
    except ValueError as error:
        print(f"tf_fm.distributed.server: {error}", file=sys.stderr, flush=True)
        return 2
    _, kind, index = read_tf_config()
    print(f"tf_fm.distributed.server: {kind}:{index} serving on {server.target}", flush=True)
    server.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
