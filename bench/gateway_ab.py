"""Interleaved A/B runs of the gateway's poll and submit paths: which change pays, measured on a busy machine.

    python -m bench.gateway_ab base=/tmp/gw-base new=. --rounds 3 --seconds 5

Each contender is `NAME=SOURCE_DIR[,server=uvicorn|granian][,ENV=VALUE...]`: the gateway is started from
that source tree (`python -m gateway`, or granian on `gateway.__main__:app`) with a Redis of its own, the
queue cap lifted and the access log off, as item 3 of `python -m bench` runs it; all stay up for the run.
The contenders take turns, round after round (A, B, A, B, ...), so a change in the machine's load hits all
of them alike; the ratios to the first contender are taken per round, then their median. Each turn empties
its Redis, runs the POST phase, then the GET phase on jobs from it (`bench.loadgen`, its own process).

Besides req/s and latencies, each phase records the CPU seconds the gateway's processes spent per request
(/proc, children included): on a machine whose cores are busy with other work, throughput says mostly how
much CPU the scheduler gave, while CPU per request is what a change saves; on an idle machine with the
gateway CPU-bound, requests/s is about 1 / (CPU per request).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from bench.report import git_commit, render, table
from tests.integration.stack import ROOT, free_port, wait_until

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (still running ones)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def parse_contender(text: str) -> dict[str, Any]:
    name, _, rest = text.partition("=")
    source, *options = rest.split(",")
    env = dict(option.split("=", 1) for option in options)
    return {"name": name, "source": Path(source).resolve(), "server": env.pop("server", "uvicorn"), "env": env}


def server_command(server: str, port: int) -> list[str]:
    if server == "granian":
        return [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--loop", "uvloop",
                "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
                "gateway.__main__:app"]  # fmt: skip
    return [sys.executable, "-m", "gateway"]


def phase(mode: str, url: str, redis_url: str, pid: int, seconds: float, concurrency: int, ids: Path | None) -> dict:
    cmd = [sys.executable, "-m", "bench.loadgen", mode, "--url", url, "--redis", redis_url,
           "--concurrency", str(concurrency), "--seconds", str(seconds)]  # fmt: skip
    if ids is not None:
        cmd += ["--ids", str(ids)]
    cpu0 = tree_cpu_seconds(pid)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=seconds + 120)
    cpu = tree_cpu_seconds(pid) - cpu0
    result = json.loads(done.stdout)
    result["gateway_cpu_ms_per_request"] = 1000 * cpu / max(1, result["requests"])
    return result


class Contender:
    """One gateway (and its own Redis) kept running for all rounds."""

    def __init__(self, spec: dict[str, Any], workdir: Path) -> None:
        self.name = spec["name"]
        redis_port, port = free_port(), free_port()
        self.redis_url, self.url = f"redis://127.0.0.1:{redis_port}/0", f"http://127.0.0.1:{port}"
        env = {**os.environ, "REDIS_URL": self.redis_url, "GENSERVICE_PORT": str(port), "GENSERVICE_HOST": "127.0.0.1",
               "GENSERVICE_MAX_QUEUE_DEPTH": str(10**9), "GENSERVICE_ACCESS_LOG": "false",
               "PYTHONPATH": str(spec["source"]), **spec["env"]}  # fmt: skip
        self.log = open(workdir / f"{self.name}.log", "ab")  # noqa: SIM115 - closed by close()
        self.ids = workdir / f"ids-{self.name}.txt"
        redis_cmd = [sys.executable, "-m", "shared.service.redis_server", "--port", str(redis_port),
                     "--dir", str(workdir / f"redis-{self.name}"), "--no-appendonly"]  # fmt: skip
        self.redis_proc = subprocess.Popen(redis_cmd, cwd=ROOT, stdout=self.log, stderr=self.log)
        self.gateway = subprocess.Popen(server_command(spec["server"], port), cwd=spec["source"], env=env,
                                        stdout=self.log, stderr=self.log)  # fmt: skip
        self.redis = Redis.from_url(self.redis_url)
        try:
            wait_until(lambda: _ping(self.redis), 20, "Redis")
            wait_until(lambda: self.gateway.poll() is not None or _healthy(self.url), 60, f"the gateway ({self.name})")
            if self.gateway.returncode is not None:
                raise RuntimeError(f"the gateway ({self.name}) exited with {self.gateway.returncode}")
        except BaseException:
            self.close()
            print(Path(self.log.name).read_text()[-3000:], file=sys.stderr)  # why it did not come up
            raise

    def turn(self, seconds: float, concurrency: int) -> dict[str, Any]:
        """A POST phase on an empty Redis, then a GET phase on jobs from it."""
        self.redis.flushdb()
        post = phase("http-post", self.url, self.redis_url, self.gateway.pid, seconds, concurrency, None)
        self.ids.write_text("\n".join(post.pop("ids")[:200]))
        get = phase("http-get", self.url, self.redis_url, self.gateway.pid, seconds, concurrency, self.ids)
        get.pop("ids")
        return {"POST": post, "GET": get}

    def close(self) -> None:
        for proc in (self.gateway, self.redis_proc):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.log.close()


def _ping(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def summarize(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Medians over the rounds, and each contender's paired ratio to the first one (same round: the same load)."""
    reference = next(iter(results.values()))
    rows = []
    for name, turns in results.items():
        for op in ("POST", "GET"):
            mine, refs = [t[op] for t in turns], [t[op] for t in reference]

            def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
                return statistics.median(r[key] for r in mine)

            def ratio(key: str, mine: list[dict[str, Any]] = mine, refs: list[dict[str, Any]] = refs) -> float:
                return statistics.median(r[key] / f[key] for r, f in zip(mine, refs, strict=True))

            rows.append({
                "contender": name, "operation": op, "rounds": len(mine), "req/s (median)": med("req_per_s"),
                "p50 ms": med("p50_ms"), "p99 ms": med("p99_ms"),
                "gateway CPU ms/request": med("gateway_cpu_ms_per_request"),
                f"req/s / {next(iter(results))}'s": ratio("req_per_s"),
                f"CPU per request / {next(iter(results))}'s": ratio("gateway_cpu_ms_per_request"),
                "requests": sum(r["requests"] for r in mine),
            })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("contenders", nargs="+", help="NAME=SOURCE_DIR[,server=granian][,ENV=VALUE...]")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--out", type=Path, help="raw results as JSON")
    p.add_argument(
        "--into",
        type=Path,
        help="a `python -m bench` results JSON (bench/results/BENCHMARKS.json): "
        "the summary goes in under --key, and the report beside it (BENCHMARKS.md) is rendered again",
    )
    p.add_argument("--key", default="gateway_ab", help="the entry of --into (each gateway_ab* entry is a subsection)")
    p.add_argument("--title", default="Gateway changes, A/B", help="the subsection's title in the report")
    p.add_argument("--conditions", default="", help="what the machine was doing, said in the report as given")
    args = p.parse_args(argv)  # fmt: skip
    contenders = [parse_contender(c) for c in args.contenders]
    results: dict[str, list[dict[str, Any]]] = {c["name"]: [] for c in contenders}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gateway-ab-") as tmp:
        running: list[Contender] = []
        try:
            for spec in contenders:
                running.append(Contender(spec, Path(tmp)))
            for r in range(args.rounds):
                for contender in running:
                    res = contender.turn(args.seconds, args.concurrency)
                    results[contender.name].append(res)
                    post, get = res["POST"], res["GET"]
                    print(f"round {r} {contender.name}: POST {post['req_per_s']:.0f}/s "
                          f"{post['gateway_cpu_ms_per_request']:.3f} ms CPU, GET {get['req_per_s']:.0f}/s "
                          f"{get['gateway_cpu_ms_per_request']:.3f} ms CPU", file=sys.stderr, flush=True)  # fmt: skip
        finally:
            for contender in running:
                contender.close()
    summary = {
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "commit": git_commit(),
        "load average at start": ", ".join(f"{x:.2f}" for x in load_start),
        "load average at end": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "seconds per phase": args.seconds, "connections": args.concurrency, "conditions": args.conditions,
        "title": args.title,
        "contenders": {c["name"]: _describe(c) for c in contenders}, "rows": summarize(results),
    }  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({**summary, "results": results}, indent=1))
    if args.into:
        merged = json.loads(args.into.read_text())  # a run's results: the rest of the report comes from them
        merged[args.key] = summary
        args.into.write_text(json.dumps(merged, indent=1, default=str))
        report_path = ROOT / f"{args.into.stem}.md"
        report_path.write_text(render(merged, report_path.parent))
    print(f"load average at start {summary['load average at start']}, at end {summary['load average at end']}")
    print(table(summary["rows"]))
    return 0


def _describe(spec: dict[str, Any]) -> str:
    env = ", ".join(f"{k}={v}" for k, v in spec["env"].items())
    return f"{spec['source']} ({spec['server']}{'; ' + env if env else ''})"


if __name__ == "__main__":
    raise SystemExit(main())
