#!/usr/bin/env python3
"""Sends GETs for one URL through a proxy at a fixed rate, on keep-alive
connections (a new one when the proxy closes one), for a number of seconds
or until stdin closes; then prints one JSON line of status counts
({"403": 1200, "429": 560, ...}; "error" for requests that got no status).

Used by soak.sh for its denials and rate-limited requests: a paced client,
so the soak measures drift under steady load rather than at saturation.
"""

import argparse
import asyncio
import base64
import json
import sys
import time
from urllib.parse import urlsplit


async def one(args, state, credential):
    if state.get("writer") is None:
        host, port = args.proxy.rsplit(":", 1)
        state["reader"], state["writer"] = await asyncio.open_connection(host, int(port))
    reader, writer = state["reader"], state["writer"]
    authority = urlsplit(args.url).netloc
    head = f"GET {args.url} HTTP/1.1\r\nHost: {authority}\r\n"
    if credential:
        head += f"Proxy-Authorization: Basic {credential}\r\n"
    writer.write((head + "\r\n").encode())
    answer = await reader.readuntil(b"\r\n\r\n")
    status = answer.split(b" ", 2)[1].decode()
    length, close = 0, False
    for line in answer.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        elif name.lower() == b"connection" and value.strip().lower() == b"close":
            close = True
    await reader.readexactly(length)
    if close:
        writer.close()
        state["writer"] = None
    return status


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxy", required=True, help="HOST:PORT")
    parser.add_argument("--user", default="", help="AGENT:KEY")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=0, help="0: until stdin closes")
    args = parser.parse_args()
    credential = base64.b64encode(args.user.encode()).decode() if args.user else ""

    counts, state = {}, {}
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if args.seconds > 0:
        loop.call_later(args.seconds, stop.set)
    else:
        loop.run_in_executor(None, sys.stdin.read).add_done_callback(lambda _: stop.set())

    interval, next_at = 1.0 / args.rate, time.monotonic()
    while not stop.is_set():
        try:
            status = await asyncio.wait_for(one(args, state, credential), 10)
        except Exception:  # noqa: BLE001 - counted; the next request reconnects
            status = "error"
            if state.get("writer") is not None:
                state["writer"].close()
            state["writer"] = None
        counts[status] = counts.get(status, 0) + 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
        else:
            next_at = time.monotonic()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
