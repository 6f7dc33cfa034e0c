"""Worker CPU per delta spent reading an upstream's streamed body through a provider.

Not a test: prints microseconds of this process's CPU per text delta read
through `OpenAIProvider.stream` / `AnthropicProvider.stream`. The fake
upstream runs in a child process (plain asyncio, chunked transfer encoding,
the providers' wire format), so its CPU is not counted. Two shapes:

- burst: one stream of N deltas written as fast as possible; the kernel
  merges writes, so the reader sees large chunks;
- paced: S concurrent streams, each writing one event every `--interval` ms,
  so most reads carry one event (as at 100 streams x 20-100 tok/s).

Each provider is measured twice: through chatsock's aiohttp transport
(providers/transport.py), and through the SDK's own httpx2 client (httpcore
and anyio), which the providers keep when a proxy is configured: the bench
sets HTTP_PROXY with NO_PROXY=127.0.0.1 so that path runs without a proxy.

Usage: python bench/micro_upstream.py [--deltas 20000] [--streams 100]
       [--per-stream 200] [--interval 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chatsock.providers.anthropic import AnthropicProvider
from chatsock.providers.base import ChatMessage, ChatRequest, Provider
from chatsock.providers.openai import OpenAIProvider

PIECE = "token "


def _openai_events(count: int) -> tuple[list[bytes], bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    head = chunk({"role": "assistant", "content": ""})
    tail = chunk({}, "stop") + b"data: [DONE]\n\n"
    return [head] + [chunk({"content": PIECE})] * count, tail


def _anthropic_events(count: int) -> tuple[list[bytes], bytes]:
    def event(name: str, payload: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    message = {
        "id": "msg",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "bench",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    head = event("message_start", {"type": "message_start", "message": message}) + event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    delta = event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": PIECE}},
    )
    tail = (
        event("content_block_stop", {"type": "content_block_stop", "index": 0})
        + event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": count},
            },
        )
        + event("message_stop", {"type": "message_stop"})
    )
    return [head] + [delta] * count, tail


def _chunked(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = orjson.loads(await reader.readexactly(length))
            # The model names the shape: "burst-N" or "paced-N-MS".
            shape, count, *rest = body["model"].split("-")
            make = _anthropic_events if head.startswith(b"POST /v1/messages") else _openai_events
            events, tail = make(int(count))
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            if shape == "burst":
                frame = _chunked(events[1])
                writer.write(_chunked(events[0]) + frame * (len(events) - 1))
            else:
                interval = int(rest[0]) / 1000
                for event in events:
                    writer.write(_chunked(event))
                    await writer.drain()
                    await asyncio.sleep(interval)
            writer.write(_chunked(tail) + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _upstream(port_out: Any) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_serve_connection, "127.0.0.1", 0, backlog=1024)
        port_out.send(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def _read(provider: Provider, model: str) -> int:
    request = ChatRequest([ChatMessage("user", "benchmark")], model=model)
    return sum([1 async for delta in provider.stream(request) if delta.text])


async def _measure(provider: Provider, models: list[str]) -> tuple[float, float, int]:
    """CPU seconds, wall seconds and text deltas to read every model's stream at once."""
    await _read(provider, "burst-1")  # warm up: connection pool, imports, caches
    cpu, wall = time.process_time(), time.perf_counter()
    counts = await asyncio.gather(*(_read(provider, model) for model in models))
    return time.process_time() - cpu, time.perf_counter() - wall, sum(counts)


Factory = Callable[[int], Provider]


def _sdk_client(factory: Factory) -> Factory:
    """`factory`, building its provider on the SDK's own httpx2 client (see module doc)."""

    def make(port: int) -> Provider:
        saved = {name: os.environ.get(name) for name in ("HTTP_PROXY", "NO_PROXY")}
        os.environ.update(HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1")
        try:
            return factory(port)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    return make


KINDS: dict[str, Factory] = {
    "openai": lambda port: OpenAIProvider(
        "bench", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0
    ),
    "anthropic": lambda port: AnthropicProvider(
        "bench", base_url=f"http://127.0.0.1:{port}", api_key="k", max_retries=0
    ),
}


KINDS.update({f"{kind}/sdk": _sdk_client(factory) for kind, factory in list(KINDS.items())})


async def run(port: int, args: argparse.Namespace) -> None:
    shapes = {
        f"burst 1 x {args.deltas}": [f"burst-{args.deltas}"],
        f"paced {args.streams} x {args.per_stream} @{args.interval}ms": [
            f"paced-{args.per_stream}-{args.interval}"
        ]
        * args.streams,
    }
    print(f"{'provider':<14} {'shape':<28} {'cpu us/delta':>13} {'net of start':>13} {'wall s':>7}")
    for kind, factory in KINDS.items():
        # What opening a stream costs (request, connection, headers), to subtract.
        start_cpu, _, _ = await _best(factory, port, ["burst-1"] * args.streams, args.repeat)
        start = start_cpu / args.streams
        print(f"{kind:<14} {'start of a stream':<28} {start * 1e6:>13.1f}")
        for label, models in shapes.items():
            cpu, wall, deltas = await _best(factory, port, models, args.repeat)
            net = (cpu - start * len(models)) / deltas
            per_delta = cpu / deltas * 1e6
            print(f"{kind:<14} {label:<28} {per_delta:>13.1f} {net * 1e6:>13.1f} {wall:>7.2f}")


async def _best(
    factory: Factory, port: int, models: list[str], repeat: int
) -> tuple[float, float, int]:
    """The run with the least CPU of `repeat`, each on a fresh provider."""
    runs = []
    for _ in range(repeat):
        provider = factory(port)
        try:
            runs.append(await _measure(provider, models))
        finally:
            await provider.aclose()
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=20000)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--per-stream", type=int, default=200)
    parser.add_argument("--interval", type=int, default=5, help="ms between paced events")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    receive, send = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.Process(target=_upstream, args=(send,), daemon=True)
    server.start()
    try:
        asyncio.run(run(receive.recv(), args))
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
