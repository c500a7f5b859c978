"""A private ``redis-server`` on a free port (tests and benchmarks that stop and restart it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, and one this process has not handed out before.

    The kernel may offer the same free port to two binds in a row; a server given
    two equal ports (Triton's HTTP and gRPC) refuses to start.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


class RedisServer:
    def __init__(self, workdir: Path, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not installed (Debian package redis-server)")
        self.binary = found
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(
        self,
        timeout_s: float = 10,
        *,
        extra: list[str] | None = None,
        config: Path | None = None,
        sentinel: bool = False,
    ) -> None:
        """``extra``: more arguments; ``config`` (+ ``sentinel``): run from a config file."""
        if config is not None:
            args = [self.binary, str(config), *(["--sentinel"] if sentinel else [])]
            self.process = subprocess.Popen(  # noqa: S603 - our own config
                args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir
            )
            self._wait(timeout_s)
            return
        self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *(extra or []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait(timeout_s)

    def _wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not redis_answers(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 <= 65535 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class LocalRedisCluster:
    """A real Redis Cluster of ``masters`` nodes (no replicas), from ``redis-server``."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = []
        for index in range(masters):
            node_dir = workdir / f"node{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            node = RedisServer(node_dir)
            node.port = _cluster_port()
            self.nodes.append(node)

    @property
    def urls(self) -> list[str]:
        return [node.url.removesuffix("/0") for node in self.nodes]

    def start(self, timeout_s: float = 30) -> None:
        for node in self.nodes:
            node.start(extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(  # noqa: S603 - fixed arguments
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            info = redis.Redis(port=self.nodes[0].port).cluster("INFO")
            if isinstance(info, dict) and info.get("cluster_state") == "ok":
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ready")
            time.sleep(0.1)

    def keys_per_node(self, pattern: str) -> list[int]:
        return [
            sum(1 for _ in redis.Redis(port=node.port).scan_iter(pattern)) for node in self.nodes
        ]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class LocalSentinel:
    """A master, one replica and one sentinel watching them (quorum 1), from ``redis-server``."""

    def __init__(self, workdir: Path, master_name: str = "mymaster") -> None:
        self.master_name = master_name
        self.master = RedisServer(workdir / "master")
        self.replica = RedisServer(workdir / "replica")
        self.sentinel = RedisServer(workdir / "sentinel")
        for server in (self.master, self.replica, self.sentinel):
            server.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.sentinel.port}"

    def start(self, timeout_s: float = 30) -> None:
        self.master.start()
        self.replica.start(extra=["--replicaof", "127.0.0.1", str(self.master.port)])
        config = self.sentinel.workdir / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel.port}\nbind 127.0.0.1\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} 1000\n"
            f"sentinel failover-timeout {self.master_name} 5000\n"
        )
        self.sentinel.start(config=config, sentinel=True)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.sentinel.port)
        while not client.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "REPLICAS", self.master_name
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinel did not see the replica")
            time.sleep(0.2)

    def master_port(self) -> int:
        client = redis.Redis(port=self.sentinel.port)
        _, port = client.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
        )
        return int(port)

    def failover(self) -> None:
        redis.Redis(port=self.sentinel.port).execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "FAILOVER", self.master_name
        )

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            server.stop()
