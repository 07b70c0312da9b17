"""The click redirect under load (issue 8): wrk on loopback, PostgreSQL, 2 web workers.

    apt-get install wrk   # once; the bench's only tool outside the venv
    .venv/bin/python bench/click_bench.py [--repeat 3] [--duration 10] [--connections 50]
                                          [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Run on demand, never by the test suite. It creates a fresh PostgreSQL database (dropped at the
end), migrates it, prepares the sample edition for 1,000 subscribers and signs click tokens for
up to 20,000 (link, delivery) pairs (the sample edition has 17 links: 17,000 paths). Then, for
each repeat, two modes against the same database (the clicks table emptied before each):

- journal: ``digest web --workers 2``, the real app: ``/c/{token}`` verifies the token, takes the
  link's target from the cache, journals the click and answers 302; a background task stores
  the journal every DIGEST_TRACKING_FLUSH_MS (50).
- baseline: bench/sync_click_baseline.py under uvicorn with 2 workers: the same verification
  and lookup, then the click stored by the same code in its own transaction (the delivery's
  send time, one INSERT, one COMMIT) before the 302.

Each mode: ``wrk -t2 -c50 -d10s --latency`` with a generated Lua script that walks the signed
paths round-robin with a browser User-Agent; the server is then stopped with SIGTERM (a
graceful stop: the journal's last batch is stored before exit) and the click rows are counted.

Counting honestly. wrk's request total counts *completed* responses; when its time is up it
stops with one request still in flight on (nearly) every connection, and the server records
those too. So the script also counts the requests wrk *sent* (its ``request()`` calls) and the
check is ``rows == sent``, with ``rows - completed`` (at most one per connection) reported as in
flight when wrk stopped. Socket errors, non-2xx/3xx answers, error lines in the server's log and
journal segments left on disk are reported as well, and so are the rows already stored when wrk
finished (how far the database lags behind the clicks) and each party's share of the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support: the sample edition, as the tests prepare it

SECRET_KEY = "click-bench-key"  # fixed: tokens signed here verify in every server process
USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)
MODES = ("journal", "baseline")

# Emits one line, BENCH {json}, with wrk's own totals plus the requests sent.
LUA = r"""
local paths = {%(paths)s}
local agent = %(agent)s
local threads, started = {}, 0

function setup(thread)
  thread:set("id", started)
  table.insert(threads, thread)
  started = started + 1
end

function init(args)
  reqs = {}
  for i, path in ipairs(paths) do
    reqs[i] = wrk.format("GET", path, {["User-Agent"] = agent})
  end
  n = (id * 7919) %% #reqs  -- the threads start at different places in the list
  -- wrk calls request() once on the first thread to check the script; that one is never sent.
  sent = id == 0 and -1 or 0
end

function request()
  n = n %% #reqs + 1
  sent = sent + 1
  return reqs[n]
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("sent")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"completed": %%d, "sent": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "connect": %%d, "read": %%d, "write": %%d, "timeout": %%d, "status": %%d}\n',
    summary.requests, total, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.timeout, e.status))
end
"""


@dataclass
class Run:
    mode: str
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    completed: int
    sent: int
    rows: int
    errors: dict[str, int]
    leftover_segments: int
    stored_during_run: int
    stop_seconds: float
    cpu: dict[str, float]

    @property
    def in_flight(self) -> int:
        return self.rows - self.completed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(url: str, workdir: Path, subscribers: int, tokens: int) -> Path:
    """Migrate, prepare the sample edition, sign ``tokens`` click paths; returns the Lua script."""
    from sqlalchemy import select

    from digest.config import load_settings
    from digest.db import session_factory
    from digest.models import Delivery, Link
    from digest.tokens import TokenSigner
    from tests.support import prepare_sample_edition

    settings = load_settings(env_for(url, workdir / "setup"))
    edition = prepare_sample_edition(settings, subscribers)
    with session_factory(url)() as session:
        link_ids = list(session.scalars(select(Link.id).where(Link.edition_id == edition.id)))
        delivery_ids = list(
            session.scalars(select(Delivery.id).where(Delivery.edition_id == edition.id))
        )
    signer = TokenSigner(settings.secret_keys)
    pairs = [(link, delivery) for delivery in delivery_ids for link in link_ids][:tokens]
    paths = [f"/c/{signer.click_token(link, delivery)}" for link, delivery in pairs]
    script = workdir / "clicks.lua"
    script.write_text(
        LUA % {"paths": ",".join(json.dumps(p) for p in paths), "agent": json.dumps(USER_AGENT)}
    )
    print(
        f"edition {edition.id}: {len(link_ids)} links x {len(delivery_ids)} deliveries, "
        f"{len(paths)} signed paths",
        flush=True,
    )
    return script


def env_for(url: str, data_dir: Path) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "DIGEST_DATABASE_URL": url,
        "DIGEST_DATA_DIR": str(data_dir),
        "DIGEST_SECRET_KEYS": SECRET_KEY,
    }


def server_command(mode: str, port: int, workers: int) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if mode == "journal":
        return [str(bin_dir / "digest"), "web", "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(workers)]  # fmt: skip
    return [sys.executable, "-m", "uvicorn", "sync_click_baseline:create_app", "--factory",
            "--app-dir", str(ROOT / "bench"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--no-access-log"]  # fmt: skip


def cpu_seconds() -> dict[str, float]:
    """CPU time (user + system) so far of every live process, by pid, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    times = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        times[stat.parent.name] = (int(fields[11]) + int(fields[12])) / tick
    return times


def busy_seconds() -> float:
    """CPU time this machine has spent busy (user, system, interrupts; not idle, not waiting on
    I/O, not stolen by the hypervisor), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    )
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def process_groups(server: int) -> dict[str, set[str]]:
    """The pids of the web server (the supervisor and its workers) and of PostgreSQL."""
    groups: dict[str, set[str]] = {"web": {str(server)}, "postgres": set()}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[1] == "postgres":
            groups["postgres"].add(stat.parent.name)
        elif tail.split()[1] == str(server):
            groups["web"].add(stat.parent.name)
    return groups


def wait_ready(proc: subprocess.Popen[bytes], log: Path, port: int, workers: int) -> None:
    """Until every worker has started its app and the port answers."""
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        if log.read_text().count("Application startup complete") >= workers:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            except urllib.error.HTTPError:
                return  # the baseline app has no /healthz: its 404 says it is serving
            except OSError:
                pass
            else:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready after 60 s:\n{log.read_text()}")
        time.sleep(0.2)


def run_mode(mode: str, url: str, workdir: Path, script: Path, args: argparse.Namespace) -> Run:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE clicks"))
    data_dir = workdir / f"data-{mode}-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(env_for(url, data_dir))
    port = free_port()
    log = workdir / f"{mode}.log"
    with log.open("wb") as log_file:
        # Both servers run without uvicorn's access log, as `digest web` does.
        proc = subprocess.Popen(
            server_command(mode, port, args.workers),
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            wait_ready(proc, log, port, args.workers)
            before, busy_before, started = cpu_seconds(), busy_seconds(), time.monotonic()
            wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run(
                ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
                 "--latency", "-s", str(script), f"http://127.0.0.1:{port}"],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            after, busy, elapsed = cpu_seconds(), busy_seconds(), time.monotonic() - started
            with engine.connect() as conn:
                stored_during_run = conn.scalar(text("SELECT count(*) FROM clicks")) or 0
            # After the run: PostgreSQL's backends for the workers' connections start with it.
            groups = process_groups(proc.pid)
            wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        finally:
            proc.send_signal(signal.SIGTERM)
            stopping = time.monotonic()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                print(f"{mode}: server did not stop within 60 s; killed", flush=True)
            stop_seconds = time.monotonic() - stopping
    line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH "))
    wrk = json.loads(line.removeprefix("BENCH "))
    with engine.connect() as conn:
        rows = conn.scalar(text("SELECT count(*) FROM clicks"))
    engine.dispose()
    # Share of the machine's cores each took while wrk ran (100% = all of them).
    capacity = elapsed * (os.cpu_count() or 1) / 100
    cpu = {
        name: sum(after.get(pid, 0) - before.get(pid, 0) for pid in pids) / capacity
        for name, pids in groups.items()
    }
    cpu["wrk"] = (
        wrk_after.ru_utime + wrk_after.ru_stime - wrk_before.ru_utime - wrk_before.ru_stime
    ) / capacity
    # Anything else busy meanwhile: kernel threads (disk flushes for commits) or another job.
    cpu["other"] = (busy - busy_before) / capacity - sum(cpu.values())
    errors = {k: wrk[k] for k in ("connect", "read", "write", "timeout", "status") if wrk[k]}
    server_errors = [x for x in log.read_text().splitlines() if "Traceback" in x or "ERROR" in x]
    if server_errors:
        print(f"{mode}: {len(server_errors)} error lines in the server log {log}", flush=True)
        errors["server log"] = len(server_errors)
    run = Run(
        mode=mode,
        rate=wrk["completed"] / (wrk["duration_us"] / 1e6),
        p50_ms=wrk["p50_us"] / 1000,
        p99_ms=wrk["p99_us"] / 1000,
        max_ms=wrk["max_us"] / 1000,
        completed=wrk["completed"],
        sent=wrk["sent"],
        rows=rows or 0,
        errors=errors,
        leftover_segments=len(list((data_dir / "events").glob("*.events"))),
        stored_during_run=stored_during_run,
        stop_seconds=stop_seconds,
        cpu=cpu,
    )
    verdict = "ok" if run.rows == run.sent and not run.leftover_segments else "MISMATCH"
    print(
        f"{mode:<9} {run.rate:>8,.0f} req/s  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  "
        f"max {run.max_ms:7.2f} ms  completed {run.completed:,}  sent {run.sent:,}  "
        f"rows {run.rows:,} ({run.stored_during_run:,} stored when wrk ended, the rest while "
        f"stopping in {run.stop_seconds:.1f} s)  in flight when wrk stopped "
        f"{run.in_flight}  segments left {run.leftover_segments}  errors {errors or 'none'}  "
        f"{verdict}\n"
        f"{'':<9} CPU share of {os.cpu_count()} cores: "
        + ", ".join(f"{name} {share:.0f}%" for name, share in cpu.items()),
        flush=True,
    )
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="web server processes")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=20_000, help="distinct signed click paths")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "DIGEST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL database to connect to while creating and dropping the bench's own",
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")

    from sqlalchemy import create_engine, text

    name = "digest_click_bench_" + uuid.uuid4().hex[:8]
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.admin_url.rsplit("/", 1)[0] + "/" + name
    runs: dict[str, list[Run]] = {mode: [] for mode in modes}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            script = prepare(url, workdir, args.subscribers, args.tokens)
            for _ in range(args.repeat):
                for mode in modes:
                    runs[mode].append(run_mode(mode, url, workdir, script, args))
    finally:
        from digest.db import engine_for

        engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    report(runs, args)


def report(runs: dict[str, list[Run]], args: argparse.Namespace) -> None:
    print(
        f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.workers} workers, "
        f"{os.cpu_count()} cores, PostgreSQL; median of {args.repeat} runs\n"
    )
    print(
        "| mode | req/s | p50 ms | p99 ms | requests | rows | rows = sent | stored by the end "
        "of the run | errors |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    rates: dict[str, float] = {}
    for mode, mode_runs in runs.items():
        rates[mode] = statistics.median(r.rate for r in mode_runs)
        p50 = statistics.median(r.p50_ms for r in mode_runs)
        p99 = statistics.median(r.p99_ms for r in mode_runs)
        completed = statistics.median(r.completed for r in mode_runs)
        rows = statistics.median(r.rows for r in mode_runs)
        exact = sum(r.rows == r.sent and not r.leftover_segments for r in mode_runs)
        stored = statistics.median(r.stored_during_run / r.rows for r in mode_runs if r.rows)
        errors = sum(sum(r.errors.values()) for r in mode_runs)
        print(
            f"| {mode} | {rates[mode]:,.0f} | {p50:.1f} | {p99:.1f} | {completed:,.0f} | "
            f"{rows:,.0f} | {exact}/{len(mode_runs)} runs | {stored:.0%} | {errors} |"
        )
    if rates.get("journal") and rates.get("baseline"):
        print(f"\njournal / baseline: {rates['journal'] / rates['baseline']:.1f}x")


if __name__ == "__main__":
    main()
