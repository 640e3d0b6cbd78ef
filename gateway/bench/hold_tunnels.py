#!/usr/bin/env python3
"""Opens N connections and holds them open: CONNECT tunnels through a proxy
(or, with --direct, plain connections to the target), each proved by one GET
answered through it. Prints one JSON line when all are up ({"open": N,
"failed": F, "seconds": S}) and holds them until stdin closes, then closes
them and exits.

Used by tunnels.sh and soak.sh. The source addresses rotate over
127.0.0.1..127.0.0.K (--sources K) so the client side's ephemeral ports
do not run short past ~28,000 connections to one address.
"""

import argparse
import asyncio
import base64
import json
import sys
import time


async def open_one(args, index, credential, held):
    source = f"127.0.0.{1 + index % args.sources}"
    host, port = (args.target if args.direct else args.proxy).rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
    try:
        if not args.direct:
            head = f"CONNECT {args.authority} HTTP/1.1\r\nHost: {args.authority}\r\n"
            if credential:
                head += f"Proxy-Authorization: Basic {credential}\r\n"
            writer.write((head + "\r\n").encode())
            answer = await reader.readuntil(b"\r\n\r\n")
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(answer.split(b"\r\n", 1)[0].decode(errors="replace"))
        # One request through the tunnel: it reaches the target, and the
        # connection then idles as a held keep-alive connection would.
        writer.write(f"GET /held HTTP/1.1\r\nHost: {args.authority}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    except BaseException:
        writer.close()
        raise
    held.append(writer)


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxy", default="127.0.0.1:13160", help="HOST:PORT of the proxy")
    parser.add_argument("--target", default="127.0.0.1:18080", help="HOST:PORT, with --direct")
    parser.add_argument("--authority", default="bench.local:18080", help="what CONNECT asks for")
    parser.add_argument("--user", default="", help="AGENT:KEY for Proxy-Authorization")
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--parallel", type=int, default=200, help="connections being opened at once")
    parser.add_argument("--sources", type=int, default=8, help="loopback source addresses")
    parser.add_argument("--direct", action="store_true", help="connect to --target, no proxy")
    args = parser.parse_args()
    credential = base64.b64encode(args.user.encode()).decode() if args.user else ""

    held, errors = [], {}
    gate = asyncio.Semaphore(args.parallel)

    async def guarded(index):
        async with gate:
            try:
                await asyncio.wait_for(open_one(args, index, credential, held), 30)
            except Exception as error:  # noqa: BLE001 - counted and reported by kind
                kind = f"{type(error).__name__}: {error}"[:120]
                errors[kind] = errors.get(kind, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(guarded(i) for i in range(args.count)))
    seconds = time.monotonic() - started
    print(json.dumps({"open": len(held), "failed": args.count - len(held), "seconds": round(seconds, 2),
                      "errors": errors}), flush=True)

    # Held until whoever started us closes our stdin.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for writer in held:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
