"""Provider-side cost per streamed chunk: chatsock's fast path against the SDKs' typed streams.

Not a test: prints microseconds per chunk for the closing notes. A loopback
fake upstream (tests/fakes/upstream.py) streams N chunks in the real wire
format, written in 4 KiB blocks so the fake's own cost stays small; the
client reads them

1. through `OpenAIProvider.stream` / `AnthropicProvider.stream` (the SDK
   makes the request, the body is parsed by sse.py + orjson), and
2. through the SDK's typed iteration (`chat.completions.create(stream=True)`,
   `messages.create(stream=True)`), for comparison.

The fake runs in the same process and event loop, so every figure includes
its (small, equal) share. Best of `--repeat` runs.

Usage: python -m bench.micro_providers [--chunks 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import anthropic
import openai

from chatsock.providers.anthropic import AnthropicProvider
from chatsock.providers.base import ChatMessage, ChatRequest
from chatsock.providers.openai import OpenAIProvider
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI, Reply

REQUEST = ChatRequest([ChatMessage("user", "benchmark")], model="bench-model")
BLOCK = 4096  # bytes per write of the fake; 0: one write per event


def _reply(chunks: int, block: int) -> Reply:
    # Word-sized pieces with some non-ASCII, like real model output.
    pieces = [("token " if i % 7 else "ñandú ") for i in range(chunks)]
    return Reply(pieces=pieces, chunk_size=block or None, gap=0.0)


async def _timed(run: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    started = time.perf_counter()
    count = await run()
    return time.perf_counter() - started, count


async def bench_openai(chunks: int, repeat: int, block: int) -> dict[str, float]:
    async with FakeOpenAI() as fake:
        provider = OpenAIProvider("bench", base_url=fake.base_url, api_key="k", max_retries=0)
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0)

        async def fast() -> int:
            fake.enqueue(_reply(chunks, block))
            return sum([1 async for d in provider.stream(REQUEST) if d.text])

        async def typed() -> int:
            fake.enqueue(_reply(chunks, block))
            stream = await client.chat.completions.create(
                model="bench-model",
                messages=[{"role": "user", "content": "benchmark"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            count = 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    count += 1
            return count

        try:
            return {
                "fast path (provider.stream)": await _best(fast, chunks, repeat),
                "SDK typed chunks": await _best(typed, chunks, repeat),
            }
        finally:
            await provider.aclose()
            await client.close()


async def bench_anthropic(chunks: int, repeat: int, block: int) -> dict[str, float]:
    async with FakeAnthropic() as fake:
        provider = AnthropicProvider("bench", base_url=fake.base_url, api_key="k", max_retries=0)
        client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="k", max_retries=0)

        async def fast() -> int:
            fake.enqueue(_reply(chunks, block))
            return sum([1 async for d in provider.stream(REQUEST) if d.text])

        async def typed() -> int:
            fake.enqueue(_reply(chunks, block))
            stream = await client.messages.create(
                model="bench-model",
                max_tokens=1024,
                messages=[{"role": "user", "content": "benchmark"}],
                stream=True,
            )
            count = 0
            async for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    count += 1
            return count

        try:
            return {
                "fast path (provider.stream)": await _best(fast, chunks, repeat),
                "SDK typed events": await _best(typed, chunks, repeat),
            }
        finally:
            await provider.aclose()
            await client.close()


async def _best(run: Callable[[], Awaitable[int]], chunks: int, repeat: int) -> float:
    """Microseconds per chunk, best of `repeat` runs (after one warm-up)."""
    await run()
    best = float("inf")
    for _ in range(repeat):
        seconds, count = await _timed(run)
        if count != chunks:
            raise RuntimeError(f"expected {chunks} text chunks, got {count}")
        best = min(best, seconds / count * 1e6)
    return best


async def main(chunks: int, repeat: int, block: int = BLOCK) -> None:
    writes = f"{block} B writes" if block else "one write per event"
    print(
        f"provider cost per streamed chunk: {chunks} chunks, loopback, {writes}, best of {repeat}"
    )
    for name, bench in (("openai", bench_openai), ("anthropic", bench_anthropic)):
        for path, micros in (await bench(chunks, repeat, block)).items():
            print(f"  {name:<10} {path:<30} {micros:8.1f} µs/chunk")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--block", type=int, default=BLOCK, help="bytes per write of the fake; 0: one per event"
    )
    args = parser.parse_args()
    asyncio.run(main(args.chunks, args.repeat, args.block))


if __name__ == "__main__":
    cli()
