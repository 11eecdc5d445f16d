"""Several `tune` workers on one study: SQLite, Optuna's journal file, PostgreSQL (when a server
can be started here). Real worker processes; each test takes a few training runs of a tiny model."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from prismrec.experiment.workers import Claim, is_stale, open_storage, worker_id
from prismrec.errors import ConfigError

WORKER = """
import json, os, signal, sys
import prismrec.experiment.search as search
from prismrec.data import load_dataset

data, out, storage, trials, kill_at = sys.argv[1:6]
dataset = load_dataset(data)
gate = os.environ.get("START_GATE")  # two workers: both ready (data loaded) before either asks for a trial
if gate:
    import time
    open(os.path.join(gate, str(os.getpid())), "w").close()
    deadline = time.time() + 120
    while len(os.listdir(gate)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    # each trial lasts long enough for the other worker to join (its start lags on a loaded machine)
    unpaced = search.run_experiment
    search.run_experiment = lambda *a, **kw: (time.sleep(1.0), unpaced(*a, **kw))[1]
if int(kill_at) >= 0:  # die (SIGKILL, no clean-up) at this epoch of the first trial
    real = search.run_experiment
    def killing(cfg, seeds, folder, **kw):
        inner = kw["on_epoch_end"]
        def hook(row):
            inner(row)
            if row["epoch"] == int(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)
        kw["on_epoch_end"] = hook
        return real(cfg, seeds, folder, **kw)
    search.run_experiment = killing
summary = search.tune("lightgcn", "planted", ["lr=1e-3..1e-1:log", "n_layers=1|2"], int(trials), out,
                      {"epochs": 3, "threads": 1}, dataset=dataset, final_seeds=[1],
                      storage=None if storage == "-" else storage, heartbeat_s=1, grace_s=5,
                      log=lambda m: print(m, flush=True))
print("SUMMARY " + json.dumps({"trials": summary["trials"], "selected": summary["selected"]["number"]}))
"""


def _start(script, planted_dir, out, storage, trials, kill_at=-1, gate=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"START_GATE": str(gate)} if gate else {})}
    return subprocess.Popen([sys.executable, str(script), str(planted_dir), str(out), storage or "-", str(trials),
                             str(kill_at)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _two_workers(tmp_path, planted_dir, storage, trials=4):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "search"
    gate = tmp_path / "gate"  # otherwise one worker can take every trial before the other has started
    gate.mkdir()
    procs = [_start(script, planted_dir, out, storage, trials, gate=gate) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    return out, outputs


def _check_shared(out, outputs, trials):
    summaries = [json.loads(o.split("SUMMARY ", 1)[1]) for o in outputs]
    records = summaries[0]["trials"]
    # every trial ran once, by one worker: its number is logged by exactly one of them
    ran = [[n for n in range(len(records)) if f"trial {n}: " in o] for o in outputs]
    assert sorted(ran[0] + ran[1]) == list(range(len(records))) and ran[0] and ran[1], ran
    assert trials <= len(records) <= trials + 1  # two workers may both start the last one
    assert all(r["state"] == "complete" for r in records)
    assert all((out / f"trial-{r['number']}" / "metrics.json").is_file() for r in records)
    # both end with the same selection; its final seeds were trained by one of them only
    assert summaries[0]["selected"] == summaries[1]["selected"]
    assert sum(o.count("selected trial") for o in outputs) == 1
    assert (out / "best" / "FINISHED").is_file() and not (out / "best.claim").exists()


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_one_study(planted_dir, tmp_path, kind):
    storage = None if kind == "sqlite" else f"journal:{tmp_path / 'study.journal'}"
    out, outputs = _two_workers(tmp_path, planted_dir, storage)
    _check_shared(out, outputs, 4)


def test_a_killed_workers_trial_is_retried_once_from_its_checkpoint(planted_dir, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out, storage = tmp_path / "search", f"journal:{tmp_path / 'study.journal'}"
    killed = _start(script, planted_dir, out, storage, 2, kill_at=1)
    killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL
    survivor = _start(script, planted_dir, out, storage, 2)
    output = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0, output
    records = json.loads(output.split("SUMMARY ", 1)[1])["trials"]
    assert [r["state"] for r in records] == ["interrupted", "complete", "complete"]
    assert records[1]["params"] == records[0]["params"]  # the retry: same point
    assert "trial 0 was interrupted" in output and "trial 1 retries interrupted trial 0" in output
    assert "resuming from the checkpoint after epoch 0" in output  # not from scratch
    assert not (out / "trial-0").exists() and (out / "trial-1" / "FINISHED").is_file()
    # after the retry, the search draws the points an uninterrupted one draws (was: other points)
    from prismrec.data import load_dataset
    from prismrec.experiment.search import tune

    calm = tune("lightgcn", "planted", ["lr=1e-3..1e-1:log", "n_layers=1|2"], 2, tmp_path / "calm",
                {"epochs": 3, "threads": 1}, dataset=load_dataset(planted_dir), final_seeds=[1], log=lambda m: None)
    assert [r["params"] for r in records[1:]] == [r["params"] for r in calm["trials"]]


def test_stale_rules(tmp_path):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    study = optuna.create_study(storage=storage)
    live, dead, silent = study.ask(), study.ask(), study.ask()
    live.set_user_attr("worker", worker_id())
    live.set_user_attr("heartbeat", time.time())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead.set_user_attr("worker", f"{socket.gethostname()}:{gone.pid}")
    dead.set_user_attr("heartbeat", time.time())
    silent.set_user_attr("worker", "elsewhere:1")
    silent.set_user_attr("heartbeat", time.time() - 100)
    trials = {t.number: t for t in study.get_trials()}
    assert not is_stale(trials[0], grace=60)  # this process, fresh stamp
    assert is_stale(trials[1], grace=60)  # same host, process gone: at once
    assert not is_stale(trials[2], grace=200) and is_stale(trials[2], grace=60)  # other host: by its stamp


def test_claim_is_exclusive_and_taken_over_from_a_dead_holder(tmp_path):
    first, second = Claim(tmp_path / "c", interval=0.1, grace=60), Claim(tmp_path / "c", interval=0.1, grace=60)
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire()
    second.release()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "c").write_text(json.dumps({"worker": f"{socket.gethostname()}:{gone.pid}"}))
    assert first.acquire()  # its holder died: taken over
    first.release()


def test_bad_storage_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        open_storage(f"journal:{tmp_path / 'nope' / 'j.log'}", tmp_path)
    with pytest.raises(ConfigError, match="cannot open it|driver"):
        open_storage("nosuchdb://x/y", tmp_path)


# --- PostgreSQL: a throwaway server, when the binaries and a driver are here -------------------

def _pg_bin() -> Path | None:
    for name in ("initdb", "pg_ctl"):
        if shutil.which(name) is None:
            return None
    return Path(shutil.which("initdb")).resolve().parent


@pytest.fixture
def postgres_url():
    """A PostgreSQL server in a temporary folder (run as the ``postgres`` user when we are root);
    skipped, with the reason, when it cannot be started."""
    pytest.importorskip("psycopg", reason="postgresql:// URLs need the psycopg driver (pip install 'psycopg[binary]')")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="prismrec-pg-"))  # pytest's tmp folders are private to root
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(root, 0o777)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    init = subprocess.run(as_user + [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "prismrec"],
                          capture_output=True, text=True)
    if init.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    start = subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
                                      "-o", f"-p {port} -k {root} -h 127.0.0.1", "start"],
                           capture_output=True, text=True)
    if start.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-300:]}")
    try:
        yield f"postgresql://prismrec@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(planted_dir, tmp_path, postgres_url):
    out, outputs = _two_workers(tmp_path, planted_dir, postgres_url)
    _check_shared(out, outputs, 4)


def test_tune_workers_option_starts_the_others_itself(planted_dir, tmp_path):
    from typer.testing import CliRunner

    from prismrec.cli import app

    out = tmp_path / "t"
    result = CliRunner().invoke(app, [
        "tune", "--model", "bpr", "--dataset", "planted", "--data-dir", str(planted_dir.parent), "--out", str(out),
        "--trials", "4", "--seeds", "5", "--set", "epochs=2", "--space", "lr=1e-3..1e-1:log", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "2 workers on the study: this one and 1 more" in result.output
    other = (out / "worker-1.log").read_text()
    assert "Traceback" not in other
    # the other worker ran on the same study (trials, or the final seeds) and ends with the same selection
    assert other.strip().splitlines()[-1] == result.output.strip().splitlines()[-1]
    assert other.strip().splitlines()[-1].startswith("selected: {'lr': ")
    trials = json.loads((out / "tuning.json").read_text())["trials"]
    assert 4 <= len(trials) <= 5 and all(t["state"] == "complete" for t in trials)
    assert (out / "best" / "FINISHED").is_file() and not (out / "best.claim").exists()
    # every trial ran with the threads split between the two workers, and the search stays the same
    # search when resumed with one worker (threads are not part of its identity)
    assert json.loads((out / "search.json").read_text())["overrides"]["threads"] >= 1
    again = CliRunner().invoke(app, [
        "tune", "--model", "bpr", "--dataset", "planted", "--data-dir", str(planted_dir.parent), "--out", str(out),
        "--trials", "4", "--seeds", "5", "--set", "epochs=2", "--space", "lr=1e-3..1e-1:log"])
    assert again.exit_code == 0, again.output


def test_a_failed_extra_worker_is_one_line_naming_its_log(tmp_path):
    from prismrec.errors import RunError
    from prismrec.experiment.workers import extra_workers

    command = [sys.executable, "-c", "import sys; print('first'); print('the reason'); sys.exit(3)"]
    with pytest.raises(RunError, match=r"worker-1.log stopped with exit code 3: the reason \(its output: "):
        with extra_workers(command, tmp_path, 1):
            pass
    with extra_workers(command, tmp_path / "none", 0):  # no extra worker: nothing started, nothing written
        pass
    assert not (tmp_path / "none").exists()
