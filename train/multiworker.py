"""Training on several machines (`bcsub train --multi-worker`): the ``TF_CONFIG`` check, who is the chief,
where each worker writes, the strategy, and keeping every worker's stop decision the same.

Every worker runs the same command. The chief (the ``chief`` task, else worker 0) writes the run dir; the
other workers train in a scratch folder next to it (``.RUN.worker-I``, kept for a resume, deleted once
they finish), so on one machine or a shared disk they never write the run dir."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from train.errors import BcsubError

TASK_TYPES = ("chief", "worker")
# A collective that waits longer than this for a lost worker fails instead of hanging.
COLLECTIVE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in the cluster ``TF_CONFIG`` describes."""

    task_type: str
    index: int
    num_workers: int
    is_chief: bool

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.index}"


def read_tf_config(raw: str | None = None) -> ClusterTask:
    """Parse and check ``TF_CONFIG`` (default: the environment's); a mistake is one ``BcsubError`` that
    names the field."""
    raw = os.environ.get("TF_CONFIG") if raw is None else raw
    example = ('e.g. TF_CONFIG=\'{"cluster":{"worker":["host1:12345","host2:12345"]},'
               '"task":{"type":"worker","index":0}}\'')
    if not raw or not raw.strip():
        raise BcsubError(f"--multi-worker needs TF_CONFIG set on every machine ({example})")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise BcsubError(f"TF_CONFIG is not valid JSON ({err.msg} at character {err.pos}); {example}") from None
    if not isinstance(config, dict):
        raise BcsubError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task'; {example}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise BcsubError(f"TF_CONFIG 'cluster': missing or not an object of host lists; {example}")
    for task_type, hosts in cluster.items():
        if task_type not in TASK_TYPES:
            raise BcsubError(f"TF_CONFIG 'cluster.{task_type}': unknown task type; use only "
                             f"{' and '.join(TASK_TYPES)} (MultiWorkerMirroredStrategy)")
        if not isinstance(hosts, list) or not hosts or not all(_is_address(h) for h in hosts):
            raise BcsubError(f"TF_CONFIG 'cluster.{task_type}': must be a non-empty list of \"host:port\" "
                             f"strings, got {json.dumps(hosts)}")
    if len(cluster.get("chief", [])) > 1:
        raise BcsubError("TF_CONFIG 'cluster.chief': at most one chief address")
    addresses = [h for hosts in cluster.values() for h in hosts]
    if len(set(addresses)) != len(addresses):
        raise BcsubError(f"TF_CONFIG 'cluster': an address appears twice ({', '.join(addresses)}); every task "
                         "needs its own host:port")
    if not isinstance(task, dict):
        raise BcsubError("TF_CONFIG 'task': missing or not an object like {\"type\": \"worker\", \"index\": 0}")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise BcsubError(f"TF_CONFIG 'task.type': {json.dumps(task_type)} is not a task type of 'cluster' "
                         f"({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task_type]):
        raise BcsubError(f"TF_CONFIG 'task.index': {json.dumps(index)} must be an integer from 0 to "
                         f"{len(cluster[task_type]) - 1} (one per address in 'cluster.{task_type}')")
    is_chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    return ClusterTask(task_type, index, len(addresses), is_chief)


def _is_address(host: object) -> bool:
    if not isinstance(host, str) or ":" not in host:
        return False
    name, port = host.rsplit(":", 1)
    return bool(name) and port.isdigit() and 0 < int(port) < 65536


def worker_out(out: str, task: ClusterTask) -> str:
    """Where this worker writes: the run dir for the chief, a scratch folder next to it for the others."""
    if task.is_chief:
        return out
    path = Path(out)
    return str(path.parent / f".{path.name}.{task.task_type}-{task.index}")


def make_multi_worker_strategy():
    """``MultiWorkerMirroredStrategy`` from the checked ``TF_CONFIG``, whose collectives fail after
    ``COLLECTIVE_TIMEOUT_S`` instead of waiting forever for a lost worker."""
    import tensorflow as tf

    read_tf_config()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_S)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


@contextmanager
def lost_workers_fail_clearly() -> Iterator[None]:
    """Turn TensorFlow's errors for a worker that died or cannot be reached (a collective aborted, timed out,
    or the coordination service lost a task) into one ``BcsubError`` that says what happened and what to do."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError, tf.errors.InternalError) as err:
        raise BcsubError(lost_worker_message(str(err))) from None


def lost_worker_message(error: str) -> str:
    """One line from a TensorFlow cluster error: which task was lost (when it says), and how to resume."""
    unhealthy = error.partition("unhealthy")[2]
    lost = unhealthy or " ".join(re.findall(r"remote target (\S+)", error))
    tasks = sorted(set(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", lost)))
    lost = ", ".join(f"{job} {index}" for job, index in tasks) or "another worker"
    return (f"--multi-worker: lost contact with {lost} (it stopped, crashed or cannot be reached), so this worker "
            "stops too; start the same command again on every machine to resume from the last finished epoch")
