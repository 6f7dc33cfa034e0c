"""chatsock's benchmark suite (not tests): `python -m bench` or `make bench`.

`bench.run` starts a real redis-server, a paced fake OpenAI upstream
(`bench.upstream`), two chatsock workers and two workers of the naive
baseline (`bench.baseline`), drives each pair with the node load generator
(`bench/loadgen.mjs`) and prints one table. docs/performance.md explains the
figures. The micro-benchmarks are `python -m bench.micro_providers` and
`python -m bench.micro_stream_path`.
"""
