"""Fuzzing every route of pipeserve for longer: the strategies and the oracle of tests/server/test_fuzz.py
(tests/fuzzing.py), run for `--count` requests drawn with `--seed`, across all routes.

Each request is drawn by hypothesis (a route, then a valid, mutated or made-up request for it: bodies, headers,
path parameters, query strings), sent byte for byte on its own connection, and its answer judged: never a 5xx,
every 4xx in OpenAI's error shape, every 2xx valid against the route's wire model (streams as `data:` events
ending in `data: [DONE]`), and `GET /health` still 200 after it. At the end a normal chat completion must
answer. The table shows the requests sent per route, the answers by status class, and the failures; the first
few failing requests are printed whole with the server's log around them. The same `--seed` and `--count`
against a fresh server send the same requests.

Run it from the repository root with the project's virtualenv active::

    python bench/fuzz.py --count 3000 --seed 1                          # its own server, on SQLite
    python bench/fuzz.py --count 3000 --seed 1 --database postgresql    # on a fresh PostgreSQL database
    python bench/fuzz.py --url http://127.0.0.1:8000 --api-key KEY      # against a server already running
    python bench/fuzz.py --routes 'GET /logs,POST /report' --count 500  # some routes only

PostgreSQL is taken from PIPESERVE_TEST_PG (default postgresql://postgres@127.0.0.1:5432), as in the tests.
The exit status is 1 when a request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

# Run as `python bench/fuzz.py`, only bench/ is on sys.path: the strategies live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import Server, create_key, create_pg_database, drop_pg_database, start_server, stop_server
from tests.fuzzing import ROUTES, WEIGHTS, LogReader, Outcome, Route, Target, drafts, run_one

SHOWN = 5  # failing requests printed whole


def status_class(outcome: Outcome) -> str:
    status = outcome.answer.status
    return "none" if status is None else f"{status // 100}xx"


def fuzz(target: Target, routes: list[Route], count: int, seed_value: int, log: LogReader | None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    started = time.monotonic()
    weighted = [route for route in routes for _ in range(WEIGHTS.get(route.name, 1))]

    @seed(seed_value)
    @settings(
        max_examples=count,
        phases=[Phase.generate],  # no shrinking: a failure is recorded, not raised
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        route = data.draw(st.sampled_from(weighted))
        outcome = run_one(target, data.draw(drafts(route, target)), log)
        if log is not None:
            log.skip()
        outcomes.append(outcome)
        if len(outcomes) % 250 == 0:
            failed = sum(1 for o in outcomes if o.problems)
            print(f"  {len(outcomes)} requests, {failed} failed, {time.monotonic() - started:.0f} s", flush=True)

    one()
    return outcomes


def report(outcomes: list[Outcome], routes: list[Route], seconds: float, seed_value: int) -> None:
    by_route: dict[str, Counter[str]] = defaultdict(Counter)
    times: dict[str, list[float]] = defaultdict(list)
    for outcome in outcomes:
        counts = by_route[outcome.sent.route]
        counts["sent"] += 1
        counts[status_class(outcome)] += 1
        counts["failed"] += bool(outcome.problems)
        times[outcome.sent.route].append(outcome.answer.seconds)
    columns = ["sent", "2xx", "4xx", "5xx", "none", "failed"]
    print()
    print("| route | " + " | ".join(columns) + " | mean ms | max s |")
    print("|---|" + "---:|" * (len(columns) + 2))
    total: Counter[str] = Counter()
    for route in routes:
        counts = by_route.get(route.name, Counter())
        total.update(counts)
        spent = times.get(route.name) or [0.0]
        timing = f" | {1000 * sum(spent) / len(spent):.0f} | {max(spent):.1f} |"
        print(f"| {route.name} | " + " | ".join(str(counts[c]) for c in columns) + timing)
    print("| **all** | " + " | ".join(f"**{total[c]}**" for c in columns) + " | | |")
    print(f"\n{len(outcomes)} requests in {seconds:.0f} s (seed {seed_value}).")
    slowest = sorted(range(len(outcomes)), key=lambda i: -outcomes[i].answer.seconds)[:SHOWN]
    print("slowest: " + "; ".join(f"#{i} {outcomes[i].sent.route} {outcomes[i].answer.seconds:.1f} s" for i in slowest))
    if slowest:
        print(outcomes[slowest[0]].sent.describe(limit=300))
    failures = [(i, o) for i, o in enumerate(outcomes) if o.problems]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, outcome in failures:
        groups[signature(outcome)].append(i)
    if groups:
        print(f"\n{len(failures)} failures of {len(groups)} kinds; the first request of each kind:")
    for kind, (key, indexes) in enumerate(groups.items()):
        if kind == SHOWN:
            print(f"\n... and {len(groups) - SHOWN} more kinds.")
            break
        outcome = outcomes[indexes[0]]
        print(f"\n--- {key}: {len(indexes)} requests (#{', #'.join(map(str, indexes[:10]))}) of seed {seed_value} ---")
        print(outcome.sent.describe())
        print(f"-> {outcome.answer.status}: {outcome.answer.body[:400]!r}")
        for problem in outcome.problems:
            print(f"   {problem[:1000]}")
        if outcome.server_log:
            print("server log (end):\n" + outcome.server_log[-1500:])


def signature(outcome: Outcome) -> str:
    """What a failure is, for grouping: its route, its first problem's gist, and the exception the server
    logged, if any."""
    gist = outcome.problems[0].split(":")[0][:80]
    raised = [line for line in outcome.server_log.splitlines() if line and not line.startswith((" ", "INFO"))]
    return f"{outcome.sent.route} | {gist}" + (f" | {raised[-1][:120]}" if raised else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000, help="requests to send (default 3000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--url", help="fuzz a server already running here instead of starting one")
    parser.add_argument("--api-key", help="the key for --url (needed once the server has keys)")
    parser.add_argument("--routes", help="comma-separated route names as the table shows them (default: all)")
    parser.add_argument("--show", type=int, nargs="*", default=[], help="print these requests (by #) whole")
    args = parser.parse_args()

    routes = list(ROUTES)
    if args.routes:
        wanted = {name.strip() for name in args.routes.split(",")}
        routes = [route for route in ROUTES if route.name in wanted]
        if unknown := wanted - {route.name for route in routes}:
            parser.error(f"unknown routes: {sorted(unknown)}; known: {[route.name for route in ROUTES]}")

    database: str | None = None
    server: Server | None = None
    tmp: Path | None = None
    log: LogReader | None = None
    if args.url:
        target = Target(args.url.rstrip("/"), args.api_key)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="pipeserve-fuzz-"))
        key = create_key(tmp / "data", project="fuzz")
        if args.database == "postgresql":
            database = asyncio.run(create_pg_database())
        # Valid `POST /models` requests queue jobs that this server never trains (the fuzzer tests the API).
        server = start_server(
            tmp, config="finetune_max_jobs = 0\n", extra_args=("--database-url", database) if database else ()
        )
        target = Target(server.url, key)
        log = LogReader(server.log)
        print(f"pipeserve on {server.url} ({args.database}), log {server.log}", flush=True)
    try:
        target.prepare()
        started = time.monotonic()
        outcomes = fuzz(target, routes, args.count, args.seed, log)
        report(outcomes, routes, time.monotonic() - started, args.seed)
        for i in args.show:
            print(
                f"\n--- request #{i} ---\n{outcomes[i].sent.describe()}\n-> {outcomes[i].answer.status}: "
                f"{outcomes[i].answer.body[:400]!r} in {outcomes[i].answer.seconds:.1f} s"
            )
        still = target.serving()
        print("\nafter it: " + ("a normal chat completion answers." if still is None else f"FAILED: {still}"))
    finally:
        if server is not None:
            stop_server(server)
        if database is not None:
            asyncio.run(drop_pg_database(database))
    failed = still is not None or any(o.problems for o in outcomes)
    if tmp is not None:
        if failed:
            print(f"\nThe server's data directory and log are kept in {tmp}.")
        else:
            shutil.rmtree(tmp)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
