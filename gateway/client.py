"""A command-line client: submit a job, follow its progress with a bar, save the PNGs.

It follows the job's server-sent events (GET /jobs/{id}/events), reconnecting with Last-Event-ID when
the stream drops, and polls GET /jobs/{id} instead when the stream cannot be had (e.g. a 429).

python -m gateway.client diffusion --n 8 --steps 1000 --out out/grid.png
python -m gateway.client diffusion --n 4 --steps 50 --class-label cat --guidance-scale 3
python -m gateway.client diffusion --n 4 --steps 20 --sampler dpmpp_2m --class-label cat --guidance-scale 3 \
    --guidance-interval 0.28 5.42
python -m gateway.client ebm --n 8 --class-label ship --url http://gpu-box:8000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

TERMINAL = ("finished", "failed", "canceled")
RECONNECTS = 3  # times a dropped event stream is resumed before the client polls instead


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["diffusion", "ebm"])
    p.add_argument("--url", default="http://localhost:8000", help="the gateway")
    p.add_argument("--n", type=int, default=4, help="number of images")
    p.add_argument(
        "--steps", type=int, default=None, help="diffusion: 1000 (DDPM) or fewer (DDIM); ebm: Langevin steps"
    )
    p.add_argument("--class-label", default=None, help="a CIFAR-10 class name or index")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None, help="diffusion only")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp_2m"], default=None, help="diffusion only")
    p.add_argument(
        "--guidance-interval", type=float, nargs=2, metavar=("SIGMA_LO", "SIGMA_HI"), default=None,
        help="diffusion only: guide only at steps whose noise level sigma_t is in (SIGMA_LO, SIGMA_HI]",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("out/grid.png"), help="grid PNG; images go next to it")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between status requests (when polling)")
    p.add_argument("--no-events", action="store_true", help="poll instead of following the event stream")
    p.add_argument("--api-key", default=os.environ.get("GENSERVICE_API_KEY"), help="when the gateway wants one")
    return p


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"num_images": args.n}
    for name in ("steps", "class_label", "seed", "guidance_scale", "sampler", "guidance_interval"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    return body


def sse_frames(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Server-sent event frames (field -> value) from a response's lines; comment lines skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in fields or "data" in fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def follow_events(
    client: httpx.Client, status_url: str, show: Callable[[dict[str, Any]], None]
) -> dict[str, Any] | None:
    """The job's last status, from its event stream; None when the stream cannot be had (then poll)."""
    last_id: str | None = None
    for _ in range(1 + RECONNECTS):
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with client.stream("GET", f"{status_url}/events", headers=headers, timeout=httpx.Timeout(30, read=90)) as r:
                if r.status_code != 200:
                    return None
                for frame in sse_frames(r.iter_lines()):
                    last_id = frame.get("id", last_id)
                    if frame.get("event") == "gone":
                        return None  # expired: polling says so with its 404
                    status = json.loads(frame["data"])
                    show(status)
                    if frame.get("event") == "end" or status["status"] in TERMINAL:
                        return status
        except (httpx.HTTPError, ValueError, KeyError):
            pass  # dropped or garbled: resume after the last event seen
    return None


def follow(client: httpx.Client, status_url: str, poll: float, events: bool = True) -> dict[str, Any]:
    """Follow the job until it ends, with a bar over its steps; returns the last status.

    Server-sent events when `events` and the gateway offers them; otherwise (or when the stream fails)
    a GET every `poll` seconds."""
    with tqdm(desc="queued", unit="step") as bar:

        def show(status: dict[str, Any]) -> None:
            progress = status.get("progress")
            if status["status"] == "queued":
                bar.set_description(f"queued (position {status.get('queue_position')})")
            elif progress:
                bar.set_description(status["status"])
                bar.total = progress["total"]
                bar.n = progress["step"]
                bar.refresh()

        if events:
            final = follow_events(client, status_url, show)
            if final is not None:
                return final
        while True:
            status = client.get(status_url).raise_for_status().json()
            show(status)
            if status["status"] in TERMINAL:
                return status
            time.sleep(poll)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    with httpx.Client(base_url=args.url, timeout=30, headers=headers) as client:
        response = client.post(f"/generate/{args.model}", json=request_body(args))
        if response.status_code != 202:
            print(f"rejected ({response.status_code}): {response.text}", file=sys.stderr)
            return 2
        accepted = response.json()
        try:
            status = follow(client, accepted["status_url"], args.poll, events=not args.no_events)
        except KeyboardInterrupt:
            client.delete(f"/jobs/{accepted['job_id']}")
            print(f"canceled job {accepted['job_id']}", file=sys.stderr)
            return 130
        if status["status"] != "finished":
            print(f"job {status['job_id']} {status['status']}: {status.get('error') or ''}", file=sys.stderr)
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(client.get(status["results"]["grid"]).raise_for_status().content)
        images_dir = args.out.with_name(args.out.stem + "_images")
        images_dir.mkdir(exist_ok=True)
        for k, url in enumerate(status["results"]["images"]):
            (images_dir / f"{k}.png").write_bytes(client.get(url).raise_for_status().content)
    print(f"job {status['job_id']} (seed {status['parameters']['seed']}): {args.out}, {images_dir}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
