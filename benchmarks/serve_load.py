"""Load test of ``prismrec serve``: throughput, latency, errors, refusals and the server's memory.

Trains a small finished run (LightGCN on ml100k, a few epochs, one thread) into a temporary
folder, starts ``prismrec serve`` on it as a separate process (uvicorn on 127.0.0.1, default
limits), then:

1. **load**: ``--requests`` GET ``/recommend/{user}?k=20`` (random users), ``--concurrency``
   at a time, each client thread on its own keep-alive connection; throughput, p50/p99/max
   latency and errors (any status but 200, or a failed connection);
2. **oversized**: the request of issue #14 (55,740 users, k=1425, a 1.9 GB answer before the
   limits) and a body over the byte limit, each must be refused (413); plus the largest request
   the limits accept (every user of ml100k, k=100);
3. **stall**: the same GET load again while those heavy requests are sent over and over: the
   GETs' p99/max latency shows whether they are stalled, and the server's peak RSS (VmHWM)
   whether its memory stays bounded.

Writes ``results/serve_load.{json,md}``. Numbers depend on the machine's load (run it on a quiet
machine; the committed figures name theirs).

    python -m benchmarks.serve_load [--requests 1000] [--concurrency 50] [--epochs 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import machine, write
from prismrec.data import load_dataset
from prismrec.experiment.config import resolve_config
from prismrec.experiment.runs import run_experiment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid: int) -> dict:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process, in KiB (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


class Client:
    """One keep-alive connection per thread."""

    def __init__(self, port: int) -> None:
        self.port, self.local = port, threading.local()

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, int, float]:
        """(status, body bytes, seconds); status 0 = the connection failed."""
        started = time.perf_counter()
        for attempt in range(2):  # a keep-alive connection the server closed: reconnect once
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                headers = {"content-type": "application/json"} if body is not None else {}
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    self.local.conn = None
                return response.status, len(data), time.perf_counter() - started
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt:
                    return 0, 0, time.perf_counter() - started
        raise AssertionError("unreachable")


def get_load(client: Client, n_users: int, requests: int, concurrency: int, seed: int) -> dict:
    """``requests`` GETs, ``concurrency`` at a time; latency percentiles, throughput and errors."""
    rng = random.Random(seed)
    paths = [f"/recommend/{rng.randrange(n_users)}?k=20" for _ in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: client.request("GET", p), paths))
    wall = time.perf_counter() - started
    latencies = sorted(r[2] for r in results)
    errors = sum(r[0] != 200 for r in results)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(wall, 3),
        "throughput_rps": round(requests / wall, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "max_ms": round(1000 * latencies[-1], 1),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--dataset", default="ml100k")
    args = parser.parse_args()

    dataset = load_dataset(args.dataset)
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "run"
        cfg = resolve_config("lightgcn", dataset.name, {"epochs": args.epochs, "threads": 1})
        run_experiment(cfg, [999], run, dataset=dataset, progress=False)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "prismrec", "serve", "--run", str(run), "--port", str(port),
             "--data-dir", str(dataset.path.parent)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:
            result = measure(server, port, dataset, args)
        finally:
            server.terminate()
            server.wait(timeout=30)
    result["machine"] = machine()
    result["cpu_cores"] = os.cpu_count()
    write("serve_load", result, markdown(result))


def measure(server: subprocess.Popen, port: int, dataset, args) -> dict:
    client = Client(port)
    deadline = time.time() + 300
    while True:  # wait for the server (it loads the run and computes one forward)
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        if client.request("GET", "/health")[0] == 200:
            break
        if time.time() > deadline:
            raise SystemExit("the server did not answer /health within 300 s")
        time.sleep(0.5)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", "/health")
    health = json.loads(conn.getresponse().read())
    conn.close()
    memory = {"after_start": memory_kib(server.pid)}

    client.request("GET", "/recommend/0?k=20")  # warm-up
    load = get_load(client, dataset.n_users, args.requests, args.concurrency, seed=0)
    memory["after_load"] = memory_kib(server.pid)

    # The request of issue #14, a body over the byte limit, and the largest accepted request.
    issue_request = json.dumps({"users": [u % dataset.n_users for u in range(55_740)], "k": 1425}).encode()
    huge_body = b'{"users": [' + b"1, " * 400_000 + b'1], "k": 1}'
    largest = json.dumps({"users": list(range(dataset.n_users)), "k": 100}).encode()
    heavy = {"issue #14 request (55,740 users, k=1425)": issue_request,
             f"body of {len(huge_body) / 1e6:.1f} MB": huge_body,
             f"largest accepted ({dataset.n_users} users, k=100)": largest}
    refused = {}
    for name, body in heavy.items():
        status, size, seconds = client.request("POST", "/recommend", body)
        refused[name] = {"status": status, "response_bytes": size, "ms": round(1000 * seconds, 1)}

    # The GET load again while the heavy requests are repeated from two other threads.
    stop = threading.Event()
    heavy_sent = []

    def hammer():
        while not stop.is_set():
            for body in heavy.values():
                heavy_sent.append(client.request("POST", "/recommend", body)[0])

    hammers = [threading.Thread(target=hammer) for _ in range(2)]
    for t in hammers:
        t.start()
    stalled = get_load(client, dataset.n_users, args.requests, args.concurrency, seed=1)
    stop.set()
    for t in hammers:
        t.join()
    stalled["heavy_requests_during"] = len(heavy_sent)
    stalled["heavy_statuses"] = {str(s): heavy_sent.count(s) for s in sorted(set(heavy_sent))}
    memory["after_heavy"] = memory_kib(server.pid)
    return {
        "dataset": dataset.name,
        "model": "lightgcn",
        "epochs": args.epochs,
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
        "limits": health["limits"],
        "get_load": load,
        "heavy_requests": refused,
        "get_load_during_heavy": stalled,
        "server_memory_kib": memory,
    }


def markdown(r: dict) -> str:
    mem = r["server_memory_kib"]
    lines = [
        "# prismrec serve under load",
        "",
        f"LightGCN ({r['epochs']} epochs) on {r['dataset']} ({r['n_users']:,} users, {r['n_items']:,} items), "
        f"`prismrec serve` (uvicorn, 127.0.0.1, default limits: {r['limits']['max_users']} users per request, "
        f"k <= {r['limits']['max_k']}, {r['limits']['max_items']:,} items per answer, "
        f"{r['limits']['max_body_bytes']:,}-byte bodies). Client and server share the machine "
        f"({r['cpu_cores']} CPU cores, {r['machine']['cpu']}; other work was running on it).",
        "",
        "| GET /recommend/{user}?k=20 | requests | concurrency | req/s | p50 ms | p99 ms | max ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, key in (("alone", "get_load"), ("while heavy POSTs repeat", "get_load_during_heavy")):
        g = r[key]
        lines.append(f"| {name} | {g['requests']} | {g['concurrency']} | {g['throughput_rps']} | {g['p50_ms']} | "
                     f"{g['p99_ms']} | {g['max_ms']} | {g['errors']} |")
    lines += ["", "| heavy POST /recommend | status | response bytes | ms |", "|---|---:|---:|---:|"]
    for name, h in r["heavy_requests"].items():
        lines.append(f"| {name} | {h['status']} | {h['response_bytes']:,} | {h['ms']} |")
    during = r["get_load_during_heavy"]
    lines += [
        "",
        f"During the second GET run, {during['heavy_requests_during']} heavy POSTs were sent "
        f"(statuses {during['heavy_statuses']}).",
        "",
        "Server memory (MiB): "
        + ", ".join(f"{name.replace('_', ' ')}: RSS {m['VmRSS'] / 1024:.0f}, peak {m['VmHWM'] / 1024:.0f}"
                    for name, m in mem.items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
