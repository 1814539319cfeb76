"""Start a local cluster as real processes on loopback ports, stream their logs, stop them all.

An in-process cluster hangs on 2 cores (servers need several inter-op
threads each), so every task is its own process. Each one runs in its own
process group (`start_new_session`), so the launcher can stop a task with
everything it started, and a Ctrl-C in the terminal reaches the launcher
only, which then stops all of them (SIGINT, then SIGKILL after a grace
period): no process outlives the launcher.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from tf_fm.distributed import cluster as cluster_lib

SERVER_COMMAND = (sys.executable, "-m", "tf_fm.distributed.server")
GRACE_SECONDS = 10.0  # from SIGINT to SIGKILL
_POLL_SECONDS = 0.2


class _Task:
    """One started process: its name (log prefix), command and streaming thread."""

    def __init__(self, name, command, tf_config, trains, log):
        env = {**os.environ, cluster_lib.TF_CONFIG: json.dumps(tf_config)}
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.name, self.trains = name, trains
        self.process = subprocess.Popen(
            list(command),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
            errors="replace",
        )
        self.thread = threading.Thread(target=self._stream, args=(log,), daemon=True)
        self.thread.start()

    def _stream(self, log):
        for line in self.process.stdout:
            log(f"[{self.name}] {line.rstrip()}")

    def signal(self, number):
        """Sends `number` to the task's whole process group, if it still exists."""
        try:
            os.killpg(self.process.pid, number)
        except (ProcessLookupError, PermissionError):
            pass


def _stop(tasks, log):
    """SIGINT to every group, SIGKILL to what is left after `GRACE_SECONDS`.

    SIGINT, not SIGTERM: a worker of `MultiWorkerMirroredStrategy` runs
    TensorFlow's coordination service, whose preemption notifier takes
    SIGTERM and lets training carry on; SIGINT is Python's
    `KeyboardInterrupt`, raised between two steps.
    """
    running = [t for t in tasks if t.process.poll() is None]
    for task in tasks:  # also groups whose leader exited but whose children live on
        task.signal(signal.SIGINT)
    deadline = time.monotonic() + GRACE_SECONDS
    while any(t.process.poll() is None for t in running) and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
    for task in tasks:
        task.signal(signal.SIGKILL)
        task.process.wait()
        task.thread.join(timeout=5)
    if running:
        log(f"Stopped {', '.join(t.name for t in running)}.")


def _wait(tasks, log):
    """Waits for the training tasks; the first failing task ends the wait with its code."""
    trainers = [t for t in tasks if t.trains]
    while True:
        for task in tasks:
            code = task.process.poll()
            if code not in (None, 0):
                log(f"{task.name} exited with code {code}; stopping the other processes.")
                return code
            if code == 0 and not task.trains:
                log(f"{task.name} exited before training ended; stopping the other processes.")
                return 1
        if all(t.process.poll() == 0 for t in trainers):
            return 0
        time.sleep(_POLL_SECONDS)


class _Interrupted(Exception):
    def __init__(self, number):
        super().__init__(number)
        self.number = number


def launch_local(
    argv: Sequence[str],
    *,
    workers: int,
    parameter_servers: int = 0,
    log: Callable[[str], None] = print,
    server_command: Sequence[str] = SERVER_COMMAND,
) -> int:
    """Runs a cluster of local processes on free loopback ports until training ends.

    Args:
        argv: the training command (a full argument vector, e.g.
            `[sys.executable, "-m", "tf_fm.cli", "train", ..., "--cluster",
            "tf_config"]`). Every worker runs it without parameter servers;
            the chief runs it with them.
        workers: int. W, at least 1.
        parameter_servers: int. P; with P > 0 a chief runs `argv`, and the W
            workers and P servers run `server_command`. Defaults to 0.
        log: callable printing one line (the tasks' lines come prefixed
            `[worker 0]`). Defaults to `print`.
        server_command: what the `worker` and `ps` tasks of a
            parameter-server cluster run. Defaults to `python -m
            tf_fm.distributed.server`.

    Returns:
        0 when every training process exited with 0; else the first failing
        process's exit code, or 128 + the signal number after SIGINT / SIGTERM.
    """
    if workers < 1 or parameter_servers < 0:
        raise ValueError(
            f"`workers` >= 1 and `parameter_servers` >= 0 are needed. Received: "
            f"workers={workers}, parameter_servers={parameter_servers}"
        )
    count = workers + (parameter_servers + 1 if parameter_servers else 0)
    configs = cluster_lib.tf_configs(workers, parameter_servers, cluster_lib.free_ports(count))
    lock = threading.Lock()

    def say(line):
        with lock:
            log(line)

    def interrupt(number, frame):
        raise _Interrupted(number)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    tasks = []
    try:
        for name, config in configs:
            trains = not parameter_servers or config["task"]["type"] == "chief"
            command = argv if trains else server_command
            tasks.append(_Task(name, command, config, trains, say))
        say(f"Started {', '.join(t.name for t in tasks)} on {cluster_lib.LOOPBACK}.")
        return _wait(tasks, say)
    except _Interrupted as stop:
        say(f"Interrupted (signal {stop.number}): stopping {len(tasks)} processes.")
        return 128 + stop.number
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        _stop(tasks, say)
        for number, handler in previous.items():
            signal.signal(number, handler)


def _with_cluster(argv, value):
    """`argv` with its `--cluster` value replaced by `value`."""
    result, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--cluster":
            skip = True
        elif not arg.startswith("--cluster="):
            result.append(arg)
    return [*result, "--cluster", value]


def run_cluster_command(cluster: str, argv: Sequence[str]) -> int | None:
    """What `tf-fm train --cluster CLUSTER` does before (or instead of) training here.

    * `local:W` / `local:W,P`: starts the local cluster, each training task
      running `python -m tf_fm.cli ARGV --cluster tf_config`, and returns the
      exit code (`launch_local`).
    * `tf_config`: on a `worker` or `ps` task of a parameter-server cluster,
      serves (`tf_fm.distributed.server`) until stopped and returns its exit
      code; on a training task returns None: the caller trains, with
      `train(..., cluster="tf_config")`.

    Args:
        cluster: the `--cluster` value.
        argv: the `tf-fm` arguments (`["train", ...]`).
    """
    parsed = cluster_lib.parse_cluster(cluster)
    if parsed.kind == "local":
        command = [sys.executable, "-m", "tf_fm.cli", *_with_cluster(argv, "tf_config")]
        return launch_local(
            command, workers=parsed.workers, parameter_servers=parsed.parameter_servers
        )
    config = cluster_lib.read_tf_config()
    if cluster_lib.runs_server(config):
        from tf_fm.distributed import server

        return server.main()
    return None
