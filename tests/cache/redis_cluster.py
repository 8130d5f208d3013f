"""A real 3-master Redis Cluster from redis-server subprocesses, for the cluster-mode tests.

Three masters (no replicas) on free ports, each in its own working directory under a temp dir so
their `nodes-<port>.conf` files never collide; `redis-cli --cluster create` assigns the 16384
slots, and `start` returns only once every node reports `cluster_state:ok` (before that a client
gets CLUSTERDOWN). Persistence is off: the cluster lives only as long as the test session.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.cache.redis_server import free_port

BUS_OFFSET = 10000  # a cluster node also listens on port + 10000 (the cluster bus)


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is valid and free too."""
    while True:
        port = free_port()
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port


def cluster_binaries() -> tuple[str, str] | None:
    """(redis-server, redis-cli), or None when either is missing (the tests then skip)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return None if server is None or cli is None else (server, cli)


class RedisClusterProcs:
    def __init__(self, masters: int = 3) -> None:
        found = cluster_binaries()
        if found is None:
            raise RuntimeError("redis-server / redis-cli are not installed (apt-get install redis-server)")
        self.server_exe, self.cli_exe = found
        self.ports: list[int] = []
        while len(self.ports) < masters:
            port = free_cluster_port()
            if port not in self.ports and port + BUS_OFFSET not in self.ports:
                self.ports.append(port)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """A seed node; RedisCluster discovers the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def node_client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the masters, create the cluster, wait for cluster_state:ok on every node; on any
        failure the processes already started are killed before the error propagates."""
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="legato-redis-cluster-")
        root = Path(self._tmp.name)
        for port in self.ports:
            workdir = root / str(port)
            workdir.mkdir()
            args = [
                self.server_exe,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "5000",
                "--appendonly", "no",
                "--save", "",
                "--daemonize", "no",
            ]  # fmt: skip
            self.procs.append(
                subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            self._wait(deadline, lambda p=port: bool(self.node_client(p).ping()))
        create = [self.cli_exe, "--cluster", "create"]
        create += [f"127.0.0.1:{p}" for p in self.ports]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        for port in self.ports:
            self._wait(deadline, lambda p=port: self._cluster_ok(p))

    def _cluster_ok(self, port: int) -> bool:
        info = self.node_client(port).cluster("INFO")  # parsed into a dict by redis-py
        return bool(info.get("cluster_state") == "ok")

    @staticmethod
    def _wait(deadline: float, ready: object) -> None:
        assert callable(ready)
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Redis Cluster did not come up in time")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        for proc in self.procs:
            proc.wait(10)
        self.procs = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
