"""`bcsub train --multi-worker`: the TF_CONFIG check, and two real workers on localhost (train, a killed
worker fails the run instead of hanging, the same commands resume it, only the chief writes the run dir,
the result packages)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE_TRAIN, history_epochs, run_cli
from train.errors import BcsubError
from train.multiworker import lost_worker_message, read_tf_config, worker_out

# The README's multi-machine commands (tests/test_multiworker.py runs exactly these, on free ports).
TF_CONFIG = '{"cluster":{"worker":["localhost:PORT0","localhost:PORT1"]},"task":{"type":"worker","index":INDEX}}'
TRAIN = ("bcsub train --data data/sample/train.npz --backbone tinycnn --weights none --epochs 4 --patience 0 "
         "--limit 240 --multi-worker --out runs/two-workers")
PACKAGE = "bcsub package runs/two-workers --out two-workers.zip --tta 1"


def _good(**task) -> dict:
    return {"cluster": {"worker": ["localhost:23456", "localhost:23457"]}, "task": {"type": "worker", "index": 0,
                                                                                  **task}}


@pytest.mark.parametrize("raw, field", [
    ("", "TF_CONFIG set"),
    ("{cluster:", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"task": {"type": "worker", "index": 0}}), "'cluster'"),
    (json.dumps({**_good(), "cluster": {"worker": ["localhost"]}}), "'cluster.worker'"),
    (json.dumps({**_good(), "cluster": {"worker": ["a:1"], "ps": ["b:2"]}}), "'cluster.ps'"),
    (json.dumps({**_good(), "cluster": {"worker": ["a:1", "a:1"]}}), "appears twice"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "'task'"),
    (json.dumps(_good(type="chief")), "'task.type'"),
    (json.dumps(_good(index=2)), "'task.index'"),
    (json.dumps(_good(index="0")), "'task.index'"),
])
def test_a_wrong_tf_config_names_the_field(raw, field):
    with pytest.raises(BcsubError, match=field) as err:
        read_tf_config(raw)
    assert "\n" not in str(err.value)


def test_the_chief_writes_the_run_dir_and_other_workers_a_scratch_folder_next_to_it():
    worker0, worker1 = read_tf_config(json.dumps(_good())), read_tf_config(json.dumps(_good(index=1)))
    assert worker0.is_chief and not worker1.is_chief and worker1.num_workers == 2
    assert worker_out("runs/x", worker0) == "runs/x"
    assert worker_out("runs/x", worker1) == str(Path("runs/.x.worker-1"))
    chief = {"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}
    assert not read_tf_config(json.dumps(chief)).is_chief
    assert read_tf_config(json.dumps({**chief, "task": {"type": "chief", "index": 0}})).is_chief


def test_lost_worker_message_names_the_task():
    error = ("Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are "
             "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.")
    assert "lost contact with worker 1" in lost_worker_message(error)
    refused = "StartAbort UNAVAILABLE: ... from remote target /job:worker/replica:0/task:0 while calling"
    assert "lost contact with worker 0" in lost_worker_message(refused)


def test_multi_worker_with_a_bad_tf_config_is_a_one_line_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CONFIG": json.dumps(_good(index=5))}
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "train", "--data", str(SAMPLE_TRAIN), "--backbone",
                           "tinycnn", "--weights", "none", "--multi-worker", "--out", str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'task.index'" in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(cwd: Path, ports: list[int]) -> list[subprocess.Popen]:
    procs = []
    for index in range(2):
        tf_config = TF_CONFIG.replace("PORT0", str(ports[0])).replace("PORT1", str(ports[1]))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CONFIG": tf_config.replace("INDEX", str(index))}
        args = TRAIN.split()[1:]
        args[args.index("data/sample/train.npz")] = str(SAMPLE_TRAIN)
        procs.append(subprocess.Popen([sys.executable, "-m", "tools.cli", *args], cwd=cwd, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """Wait for every process (the test's own timeout: a hang fails it), killing what is left."""
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"a worker still ran {timeout:.0f} s later: it hangs")
        results.append((proc.returncode, out, err))
    return results


@pytest.mark.slow
def test_two_workers_train_a_killed_worker_fails_the_run_and_the_same_commands_resume_it(tmp_path):
    """Worker 0 (the chief) is killed after an epoch: worker 1 stops with a clear error instead of hanging
    (the test's timeouts); the same two commands then resume and finish, from the chief's backup."""
    readme = (ROOT / "README.md").read_text()
    shown = [f"TF_CONFIG='{TF_CONFIG}'".replace("PORT0", "23456").replace("PORT1", "23457").replace("INDEX", str(i))
             for i in (0, 1)]
    assert all(line in readme for line in [*shown, TRAIN, PACKAGE]), "the README must show the commands run here"
    run, scratch = tmp_path / "runs" / "two-workers", tmp_path / "runs" / ".two-workers.worker-1"
    ports = _free_ports(2)
    chief, worker = _start_workers(tmp_path, ports)
    deadline = time.monotonic() + 300
    while not history_epochs(run / "history.csv") and chief.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert history_epochs(run / "history.csv"), "the chief never finished an epoch: " + chief.communicate()[1][-2000:]
    chief.send_signal(signal.SIGKILL)  # worker 0; a lost worker 1 is noticed by the heartbeat, in 10-80 s
    _, (code, _, err) = _finish([chief, worker], timeout=240)
    assert code == 2, err[-3000:]
    assert "error: --multi-worker: lost contact with worker 0" in err and "start the same command again" in err
    assert not (run / "model.json").exists() and (scratch / "config.json").is_file()

    results = _finish(_start_workers(tmp_path, _free_ports(2)), timeout=400)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert "run dir:" in results[0][1] and "worker 1 done; the chief wrote the run dir" in results[1][1]
    epochs = history_epochs(run / "history.csv")  # the chief's: each epoch once (or one lost by the kill)
    assert epochs == sorted(set(epochs)) and epochs[-1] == 3 and len(epochs) >= 3, epochs
    assert (run / "model.json").is_file() and not scratch.exists()
    from train.devices import training_precision

    precision = json.loads((run / "precision.json").read_text())  # both workers voted: the same machine, one policy
    assert precision["agreed_by_workers"] is True and precision["policy"] == training_precision("auto")
    assert sorted(p.name for p in run.parent.iterdir()) == ["two-workers"]
    assert any((run / "tb" / "full" / "train").iterdir())
    packaged = run_cli(*PACKAGE.split()[1:], cwd=tmp_path)
    assert packaged.returncode == 0, packaged.stdout + packaged.stderr


def test_fold_needs_folds():
    from train.config import TrainConfig

    with pytest.raises(BcsubError, match="--fold 1: needs --folds K"):
        TrainConfig(data="d", out="o", backbone="tinycnn", fold=1)
    with pytest.raises(BcsubError, match="--fold 3"):
        TrainConfig(data="d", out="o", backbone="tinycnn", folds=3, fold=3)


@pytest.mark.slow
def test_one_fold_per_machine_records_one_split_and_packages_as_one_ensemble(tmp_path):
    from train.config import TrainConfig
    from train.trainer import run_training

    dirs = [tmp_path / "fold0", tmp_path / "fold1"]
    for fold, out in enumerate(dirs):  # as two machines would: the same data, --folds and --seed
        cfg = TrainConfig.from_options(data=str(SAMPLE_TRAIN), backbone="tinycnn", weights="none", epochs=1, limit=64,
                                       batch_size=16, augment="none", folds=2, fold=fold, out=str(out))
        assert [r.name for r in run_training(cfg)] == ["."]
        assert (out / "model.json").is_file() and not (out / "fold_0").exists()
    from train.splits import read_split, split_key

    splits = [read_split(d) for d in dirs]  # each machine's fold, and the whole k-fold split, the same on both
    assert [s.fold for s in splits] == [0, 1] and split_key(dirs[0]) == split_key(dirs[1])
    assert all(a.tolist() == b.tolist() for a, b in zip(splits[0].folds, splits[1].folds))
    val0, val1 = splits[0].folds
    assert not set(val0) & set(val1) and len(val0) + len(val1) == 64 and splits[0].data.n == 320
    assert splits[0].val.tolist() == val0.tolist() and splits[1].val.tolist() == val1.tolist()
    packaged = run_cli("package", *map(str, dirs), "--out", str(tmp_path / "folds.zip"), "--tta", "1")
    assert packaged.returncode == 0, packaged.stdout + packaged.stderr
    assert "2 member(s)" in packaged.stdout
