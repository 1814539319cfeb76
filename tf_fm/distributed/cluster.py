"""Which cluster a run trains on: `--cluster` values, TF_CONFIG, free loopback ports.

`TF_CONFIG` is the JSON environment variable every `tf.distribute` process
reads (`{"cluster": {"worker": [...], "ps": [...], "chief": [...]}, "task":
{"type": "worker", "index": 0}}`); Kubeflow's TFJob sets it for each replica.
"""

import dataclasses
import json
import os
import socket

from tf_fm.errors import UsageError

TF_CONFIG = "TF_CONFIG"
LOOPBACK = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A parsed `--cluster` value.

    Args:
        kind: `"local"` (start the processes here) or `"tf_config"` (this
            process is one task of the cluster in `TF_CONFIG`).
        workers: int. Workers to start (`"local"` only; 0 otherwise).
        parameter_servers: int. Parameter servers to start (`"local"` only).
    """

    kind: str
    workers: int = 0
    parameter_servers: int = 0


def parse_cluster(text: str) -> Cluster:
    """`"local:W"`, `"local:W,P"` or `"tf_config"` as a `Cluster`.

    Raises:
        UsageError: any other value, or W < 1, or P < 0, naming the value.
    """
    value = text.strip()
    if value == "tf_config":
        return Cluster("tf_config")
    usage = f"--cluster must be 'local:W', 'local:W,P' or 'tf_config'. Received: {text!r}"
    if not value.startswith("local:"):
        raise UsageError(usage)
    parts = value[len("local:") :].split(",")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(usage)
    workers = int(parts[0])
    servers = int(parts[1]) if len(parts) == 2 else 0
    if workers < 1:
        raise UsageError(f"--cluster: at least one worker is needed. Received: {text!r}")
    if len(parts) == 2 and servers < 1:
        raise UsageError(f"--cluster: 'local:W,P' needs P >= 1 parameter servers: {text!r}")
    return Cluster("local", workers, servers)


def read_tf_config() -> dict:
    """This process's `TF_CONFIG`, checked: a cluster with workers and a task in it.

    Raises:
        UsageError: `TF_CONFIG` is unset, not JSON, or its task is not in its cluster.
    """
    text = os.environ.get(TF_CONFIG)
    if not text:
        raise UsageError(f"--cluster tf_config: the {TF_CONFIG} environment variable is not set")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{TF_CONFIG} is not valid JSON: {error}") from None
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UsageError(f"{TF_CONFIG} needs a 'cluster' and a 'task' object. Received: {text}")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise UsageError(
            f"{TF_CONFIG}: task {kind!r} index {index!r} is not in the cluster {sorted(cluster)}"
        )
    if "worker" not in cluster and "chief" not in cluster:
        raise UsageError(f"{TF_CONFIG}: the cluster has no 'worker' or 'chief' task")
    return config


def has_parameter_servers(config: dict) -> bool:
    """Whether the cluster of a TF_CONFIG trains with parameter servers."""
    return bool(config["cluster"].get("ps"))


def is_chief(config: dict) -> bool:
    """Whether this task writes the run directory: the `chief`, else worker 0."""
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task.get("index", 0) == 0


def runs_server(config: dict) -> bool:
    """Whether this task only serves variables or steps (a ps cluster's `worker` or `ps`)."""
    return has_parameter_servers(config) and config["task"]["type"] in ("worker", "ps")


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on the loopback interface now.

    The sockets are held open until all ports are chosen, so the ports are
    distinct; another program may still take one before it is used.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_configs(workers: int, parameter_servers: int, ports: list[int]) -> list[tuple[str, dict]]:
    """One `(name, TF_CONFIG)` per local process, on loopback `ports`.

    Without parameter servers: W `worker` tasks (worker 0 is the chief).
    With them: a `chief` (the coordinator), W `worker` and P `ps` tasks.
    Names are `"worker 0"`, `"chief"`, `"ps 1"`, the log prefixes.
    """
    kinds = [("worker", workers)]
    if parameter_servers:
        kinds = [("chief", 1), ("worker", workers), ("ps", parameter_servers)]
    needed = sum(n for _, n in kinds)
    if len(ports) != needed:
        raise ValueError(f"`ports`: {needed} needed. Received: {len(ports)}")
    free = iter(ports)
    cluster = {kind: [f"{LOOPBACK}:{next(free)}" for _ in range(n)] for kind, n in kinds}
    configs = []
    for kind, n in kinds:
        for index in range(n):
            name = kind if kind == "chief" else f"{kind} {index}"
            configs.append((name, {"cluster": cluster, "task": {"type": kind, "index": index}}))
    return configs


def make_strategy(config: dict):
    """The `tf.distribute` strategy of this task's cluster (call once, at program start).

    `MultiWorkerMirroredStrategy` for a cluster without `ps` tasks;
    `tf_fm.distributed.parameter_server.make_strategy(config)` otherwise.
    `TF_CONFIG` must hold `config` (the strategies read it).
    """
    import tensorflow as tf

    if has_parameter_servers(config):
        from tf_fm.distributed import loop

        return loop.parameter_server_module().make_strategy(config)
    return tf.distribute.MultiWorkerMirroredStrategy()
