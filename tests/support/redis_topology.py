"""Real Redis topologies for tests: TLS with a password, Sentinel, and Cluster.

Each one is a set of redis-server processes on loopback, in a temporary
directory, started by `start()` and stopped by `close()`. They describe
themselves to a test the same way: the `store` settings a worker needs
(`settings()` / `env()`), `keys()` and `flush()` over every data node, and
`pings()` (PINGs the data nodes answered).

Ports are chosen at random and checked free (a cluster node also needs its
bus port, +10000), so parallel pytest-xdist workers do not collide.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import random
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis

from tests.support.redis_server import find_redis_server

PASSWORD = "t0pology-pw"  # every topology here needs a password
SENTINEL_MASTER = "chatsock-master"


def free_port_pair(offset: int = 0) -> int:
    """A loopback port free now, whose `port + offset` is free too (cluster bus)."""
    for _ in range(200):
        port = random.randint(20000, 30000) if offset else random.randint(30001, 60000)
        try:
            for candidate in {port, port + offset}:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free loopback port found")


def _wait(check: Any, what: str, timeout: float = 20.0, log: Any = None) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, redis.RedisError) as exc:
            last = exc
        time.sleep(0.05)
    tail = log() if log else ""
    raise RuntimeError(f"{what} not ready within {timeout}s ({last}):\n{tail}")


class RedisProcess:
    """One redis-server (or sentinel) process with the given arguments."""

    def __init__(self, directory: Path, port: int, args: list[str]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.logfile = directory / "redis.log"
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [find_redis_server(), *self.args, "--logfile", str(self.logfile)],
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
        )

    def log(self) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _server_args(port: int, directory: Path, *extra: str) -> list[str]:
    return [
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(directory), "--daemonize", "no", "--requirepass", PASSWORD,
        "--masterauth", PASSWORD, "--repl-diskless-sync-delay", "0", *extra,
    ]  # fmt: skip


class Topology(Protocol):
    """What tests need from any of the topologies below."""

    name: str

    def settings(self) -> dict[str, Any]: ...  # the `store` section

    def env(self) -> dict[str, str]: ...  # the same, for a `chatsock serve` worker

    def store_options(self) -> dict[str, Any]: ...  # RedisStore(**options)

    def keys(self) -> set[str]: ...

    def flush(self) -> None: ...

    def pings(self) -> int: ...

    def data_url(self, prefix: str) -> str: ...  # a plain URL of the node holding `prefix`'s keys

    def close(self) -> None: ...


def _pings(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


def _store_env(store: dict[str, Any]) -> dict[str, str]:
    env = {"REDIS_URL": store["redis_url"]}
    for name, value in store.items():
        if name != "redis_url":
            shown = json.dumps(value) if not isinstance(value, str) else value
            env[f"CHATSOCK_STORE__{name.upper()}"] = shown
    return env


# -- TLS ----------------------------------------------------------------------


def write_test_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost:
    (ca.pem, server.pem, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def build(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            ).add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        else:
            alt = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("chatsock test CA", ca_key, "chatsock test CA", ca_key, ca=True)
    server_cert = build("127.0.0.1", server_key, "chatsock test CA", ca_key, ca=False)
    ca_pem, cert_pem, key_pem = (directory / n for n in ("ca.pem", "server.pem", "server.key"))
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_pem, cert_pem, key_pem


class TlsRedis:
    """One redis-server that speaks only TLS (`--port 0 --tls-port`) and needs a password."""

    name = "tls"

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="chatsock-redis-tls-")
        self.dir = Path(self._tmp.name)
        self.ca, cert, key = write_test_certificates(self.dir)
        self.port = free_port_pair()
        self.server = RedisProcess(
            self.dir / "server",
            self.port,
            _server_args(0, self.dir / "server", "--tls-port", str(self.port),
                         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                         "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"),
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"rediss://:{PASSWORD}@127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"

    def start(self) -> TlsRedis:
        self.server.start()
        _wait(lambda: self._client().ping(), "TLS redis-server", log=self.server.log)
        return self

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def settings(self) -> dict[str, Any]:
        return {"redis_url": self.url}

    def env(self) -> dict[str, str]:
        return _store_env(self.settings())

    def store_options(self) -> dict[str, Any]:
        return {"url": self.url}

    def keys(self) -> set[str]:
        with closing(self._client()) as client:
            return {bytes(k).decode() for k in client.keys("*")}

    def flush(self) -> None:
        with closing(self._client()) as client:
            client.flushall()

    def pings(self) -> int:
        with closing(self._client()) as client:
            return _pings(client)

    def plain_handshake_refused(self) -> bool:
        """Whether the port refuses a client that does not speak TLS."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            try:
                return not sock.recv(64).startswith(b"+PONG")
            except OSError:
                return True

    def data_url(self, prefix: str) -> str:
        return self.url

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def close(self) -> None:
        self.server.stop()
        self._tmp.cleanup()


# -- Sentinel -----------------------------------------------------------------


class SentinelRedis:
    """A master, a replica and one sentinel monitoring them, all with a password."""

    name = "sentinel"

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="chatsock-redis-sentinel-")
        self.dir = Path(self._tmp.name)
        ports = [free_port_pair() for _ in range(3)]
        while len(set(ports)) < 3:
            ports = [free_port_pair() for _ in range(3)]
        self.master_port, self.replica_port, self.sentinel_port = ports
        master_dir, replica_dir = self.dir / "master", self.dir / "replica"
        self.master = RedisProcess(master_dir, self.master_port,
                                   _server_args(self.master_port, master_dir))  # fmt: skip
        self.replica = RedisProcess(
            replica_dir,
            self.replica_port,
            _server_args(self.replica_port, replica_dir,
                         "--replicaof", "127.0.0.1", str(self.master_port)),
        )  # fmt: skip
        sentinel_dir = self.dir / "sentinel"
        sentinel_dir.mkdir()
        conf = sentinel_dir / "sentinel.conf"  # the sentinel rewrites it: its own file
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndaemonize no\n"
            f"dir {sentinel_dir}\n"
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel auth-pass {SENTINEL_MASTER} {PASSWORD}\n"
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n"
            f"sentinel failover-timeout {SENTINEL_MASTER} 5000\n"
        )
        self.sentinel = RedisProcess(sentinel_dir, self.sentinel_port, [str(conf), "--sentinel"])

    @property
    def url(self) -> str:
        # The host is not used: the sentinels name the master.
        return f"redis://:{PASSWORD}@{SENTINEL_MASTER}/0"

    def start(self) -> SentinelRedis:
        self.master.start()
        self.replica.start()
        self.sentinel.start()
        _wait(lambda: self._node(self.master_port).ping(), "master", log=self.master.log)
        _wait(self._replica_in_sync, "replica", log=self.replica.log)
        _wait(self._sentinel_sees_master, "sentinel", log=self.sentinel.log)
        return self

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=PASSWORD)

    def _replica_in_sync(self) -> bool:
        with closing(self._node(self.replica_port)) as client:
            info = client.info("replication")
        return bool(info.get("master_link_status") == "up")

    def _sentinel_sees_master(self) -> bool:
        with closing(redis.Redis(host="127.0.0.1", port=self.sentinel_port)) as client:
            found = client.execute_command("SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER)
        return bool(found)

    def _sentinel_sees_a_replica(self) -> bool:
        with closing(redis.Redis(host="127.0.0.1", port=self.sentinel_port)) as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", SENTINEL_MASTER)
        for replica in replicas:  # redis-py parses each into a dict
            flags = bytes(replica.get(b"flags", b"")).decode()
            link = bytes(replica.get(b"master-link-status", b"")).decode()
            if "down" not in flags and "disconnected" not in flags and link == "ok":
                return True
        return False

    def master_address(self) -> tuple[str, int]:
        with closing(redis.Redis(host="127.0.0.1", port=self.sentinel_port)) as client:
            host, port = client.execute_command(
                "SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER
            )
        return bytes(host).decode(), int(port)

    def failover(self, timeout: float = 30.0) -> tuple[str, int]:
        """Promote the replica (SENTINEL FAILOVER); the new master's address."""
        before = self.master_address()
        # The sentinel learns of replicas from the master's INFO, every 10 s.
        _wait(self._sentinel_sees_a_replica, "sentinel's replica", timeout, log=self.sentinel.log)
        with closing(redis.Redis(host="127.0.0.1", port=self.sentinel_port)) as client:
            client.execute_command("SENTINEL", "FAILOVER", SENTINEL_MASTER)

        def moved() -> bool:
            address = self.master_address()
            if address == before:
                return False
            with closing(self._node(address[1])) as client:
                return bool(client.info("replication").get("role") == "master")

        _wait(moved, "failover", timeout, log=self.sentinel.log)
        return self.master_address()

    def settings(self) -> dict[str, Any]:
        return {
            "redis_url": self.url,
            "redis_sentinels": [f"127.0.0.1:{self.sentinel_port}"],
            "redis_sentinel_master": SENTINEL_MASTER,
        }

    def env(self) -> dict[str, str]:
        return _store_env(self.settings())

    def store_options(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "sentinels": [("127.0.0.1", self.sentinel_port)],
            "sentinel_master": SENTINEL_MASTER,
        }

    def _data_nodes(self) -> Iterator[redis.Redis]:
        for port in (self.master_port, self.replica_port):
            with closing(self._node(port)) as client:
                yield client

    def keys(self) -> set[str]:
        with closing(self._node(self.master_address()[1])) as client:
            return {bytes(k).decode() for k in client.keys("*")}

    def flush(self) -> None:
        with closing(self._node(self.master_address()[1])) as client:
            client.flushall()
            client.wait(1, 2000)  # the replica too, before the next test reads it

    def pings(self) -> int:
        return sum(_pings(client) for client in self._data_nodes())

    def data_url(self, prefix: str) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.master_address()[1]}/0"

    def close(self) -> None:
        for process in (self.sentinel, self.replica, self.master):
            process.stop()
        self._tmp.cleanup()


# -- Cluster ------------------------------------------------------------------


class ClusterRedis:
    """Three masters in a Redis Cluster (no replicas), with a password."""

    name = "cluster"

    def __init__(self, masters: int = 3) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="chatsock-redis-cluster-")
        self.dir = Path(self._tmp.name)
        self.ports: list[int] = []
        while len(self.ports) < masters:
            port = free_port_pair(10000)
            if not {port, port + 10000} & {q for p in self.ports for q in (p, p + 10000)}:
                self.ports.append(port)
        cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "2000"]  # fmt: skip
        self.nodes = [
            RedisProcess(
                self.dir / str(port), port, _server_args(port, self.dir / str(port), *cluster_args)
            )
            for port in self.ports
        ]

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.ports[0]}/0"

    def start(self) -> ClusterRedis:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            _wait(lambda n=node: self._node(n.port).ping(), "cluster node", log=node.log)
        subprocess.run(
            ["redis-cli", "-a", PASSWORD, "--no-auth-warning", "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        _wait(self._cluster_ok, "cluster_state:ok", 30, log=self.nodes[0].log)
        return self

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=PASSWORD)

    def _cluster_ok(self) -> bool:
        for port in self.ports:
            with closing(self._node(port)) as client:
                info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        return True

    def settings(self) -> dict[str, Any]:
        return {"redis_url": self.url, "redis_cluster": True}

    def env(self) -> dict[str, str]:
        return _store_env(self.settings())

    def store_options(self) -> dict[str, Any]:
        return {"url": self.url, "cluster": True}

    def _masters(self) -> Iterator[redis.Redis]:
        for port in self.ports:
            with closing(self._node(port)) as client:
                yield client

    def keys(self) -> set[str]:
        return {bytes(k).decode() for client in self._masters() for k in client.keys("*")}

    def keys_by_node(self) -> dict[int, int]:
        """How many keys each master holds, by port."""
        return {
            port: int(client.dbsize())
            for port, client in zip(self.ports, self._masters(), strict=True)
        }

    def flush(self) -> None:
        for client in self._masters():
            client.flushall()

    def pings(self) -> int:
        return sum(_pings(client) for client in self._masters())

    def data_url(self, prefix: str) -> str:
        """The master of the slot of `{prefix}`, the hash tag on every key."""
        with closing(
            redis.RedisCluster(host="127.0.0.1", port=self.ports[0], password=PASSWORD)
        ) as cluster:
            node = cluster.get_node_from_key(f"{{{prefix}}}")
        return f"redis://:{PASSWORD}@127.0.0.1:{node.port}/0"

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        self._tmp.cleanup()


TOPOLOGIES: dict[str, type[TlsRedis | SentinelRedis | ClusterRedis]] = {
    "tls": TlsRedis,
    "sentinel": SentinelRedis,
    "cluster": ClusterRedis,
}


class Topologies:
    """The topologies of one test session, each started on first use."""

    def __init__(self) -> None:
        self._started: dict[str, TlsRedis | SentinelRedis | ClusterRedis] = {}

    def get(self, name: str) -> TlsRedis | SentinelRedis | ClusterRedis:
        """The topology `name`, started if it was not, with every key removed."""
        topology = self._started.get(name)
        if topology is None:
            topology = self._started[name] = TOPOLOGIES[name]().start()
        topology.flush()
        return topology

    def close(self) -> None:
        for topology in self._started.values():
            topology.close()
        self._started.clear()


@pytest.fixture(scope="session")
def redis_topologies() -> Iterator[Topologies]:
    """Real TLS, Sentinel and Cluster deployments, started once per session
    (per xdist worker) when a test first asks for one."""
    topologies = Topologies()
    yield topologies
    topologies.close()
