"""Scripted deployment: TLS certificates, SuperNode keys, SuperLink, SuperNodes, a run, stop.

Everything Flower needs for a real (non-simulated) federation, in the order an operator does
it, as plain functions plus a :class:`Deployment` that owns the processes it starts. Each
deployment lives in one folder and has its own ``FLWR_HOME`` (``<dir>/flwr-home``), so the
operator's ``~/.flwr`` is never touched::

    <dir>/tls/ca.crt ca.key server.pem server.key   CA + SuperLink certificate (SAN: hosts)
    <dir>/keys/<node>  <node>.pub                   SuperNode auth keys (EC P-384, OpenSSH)
    <dir>/flwr-home/config.toml                     the SuperLink connection ``fedreid``
    <dir>/logs/superlink.log supernode-<node>.log    process logs
    <dir>/logs/run-<id>.log flwr-*.log              ServerApp log (flwr log), CLI calls
    <dir>/nodes/<node>/flwr-home                    each SuperNode's FLWR_HOME
    <dir>/pids.json                                 what ``stop`` terminates

Flower 1.42 serves the Fleet, Control and Runtime APIs on one HTTPS port (``--port``); every
SuperNode also opens a local Runtime API port for its ClientApp processes. Ports default to
free loopback ports. The SuperLink runs with ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``
(offline, the project's dependencies are already installed) and with
``--enable-supernode-auth``: only SuperNodes whose public key was registered
(``flwr supernode register``) may connect.

Command line (each step alone, or ``up`` for all of them)::

    python -m fedreid.deploy certs    DIR [--host NAME_OR_IP ...]
    python -m fedreid.deploy keys     DIR NODE [NODE ...]
    python -m fedreid.deploy up       DIR --node market1501=market1501:/data/reid \\
                                          --node cuhk03=cuhk03:/data/reid \\
                                          --overrides "data=tiny num_rounds=2" \\
                                          --output-dir /abs/run [--keep]
    python -m fedreid.deploy stop     DIR
    python -m fedreid.deploy commands DIR --host fl.example.org --node ... --overrides ...

``commands`` prints every step as a shell command, for SuperNodes on other machines. ``up``
creates what is missing (certificates, keys), starts the SuperLink, registers and
starts one SuperNode per ``--node NAME=DATASET:DATA_ROOT``, submits the app with ``flwr run``,
waits for ``results.json`` to say ``finished`` and stops everything (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedreid.errors import FedReIDError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONNECTION = "fedreid"
LOOPBACK = "127.0.0.1"
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


class DeployError(FedReIDError):
    """A deployment step failed (the message names the step and its log file)."""


# --------------------------------------------------------------------------------------------
# TLS certificates and SuperNode keys
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """The CA and the SuperLink's certificate, as paths."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret with mode 0600 (created that way, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_certificates(
    directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = 365, overwrite: bool = False
) -> TLSFiles:
    """A self-signed CA and a SuperLink certificate it signs (EC P-256, SHA-256).

    Args:
        directory: where ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key`` go.
        hosts: names and IP addresses the SuperLink is reached at (subject alternative
            names); the defaults cover loopback only. Add the public name for real sites.
        days: validity.
        overwrite: replace existing files; otherwise existing ones are kept and returned.

    Returns:
        The four paths. Give ``ca.crt`` to every SuperNode and to ``flwr`` users.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    files = TLSFiles(
        directory / "ca.crt",
        directory / "ca.key",
        directory / "server.pem",
        directory / "server.key",
    )
    if not overwrite and all(p.is_file() for p in files.__dict__.values()):
        return files
    if not hosts:
        raise DeployError("make_certificates needs at least one host name or IP address")
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedreid"),
            x509.NameAttribute(NameOID.COMMON_NAME, "fedreid deployment CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedreid"),
                    x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(files.ca_key, key_pem(ca_key))
    _write_private(files.server_key, key_pem(server_key))
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return files


def make_node_key(directory: Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """A SuperNode authentication key pair: EC P-384 in OpenSSH format, as Flower expects.

    ``flower-supernode --auth-supernode-private-key`` loads the private key with
    ``load_ssh_private_key`` and ``flwr supernode register`` the public one with
    ``load_ssh_public_key`` (NIST curves only) -- the same files ``ssh-keygen -t ecdsa -b 384``
    writes.

    Returns:
        ``(private, public)`` paths: ``<directory>/<name>`` (mode 0600) and ``<name>.pub``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public = Path(directory) / name, Path(directory) / f"{name}.pub"
    if not overwrite and private.is_file() and public.is_file():
        return private, public
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" fedreid-{name}\n".encode()
    )
    return private, public


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _toml_str(value: str) -> str:
    """A TOML string for Flower's ``key=value`` parser (which takes no escaped quotes)."""
    if any(c in value for c in '"\\\n'):
        raise DeployError(f"value {value!r} may not contain a double quote, backslash or newline")
    return f'"{value}"'


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


@dataclass
class NodeSpec:
    """One SuperNode: its name, the dataset it owns and where that data and its state live.

    ``dataset``, ``data-root``, ``state-dir`` (and ``name``, ``source``) become its
    ``--node-config``; see :mod:`fedreid.clients.node`.
    """

    name: str
    dataset: str
    data_root: str
    state_dir: str = ""
    source: str = ""
    register: bool = True  # False: start with a key the SuperLink does not know

    def node_config(self) -> str:
        """The ``--node-config`` string."""
        pairs = {
            "name": self.name,
            "dataset": self.dataset,
            "data-root": str(Path(self.data_root).resolve()),
        }
        if self.state_dir:
            pairs["state-dir"] = str(Path(self.state_dir).resolve())
        if self.source:
            pairs["source"] = self.source
        return " ".join(f"{k}={_toml_str(v)}" for k, v in pairs.items())


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, from /proc; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie holds no resources; its parent reaps it
        return None
    return int(fields[1]), fields[19]


def kill_leftovers(tree: dict[int, str], wait_s: float = 5.0) -> None:
    """SIGKILL each process of ``tree`` (pid -> start time) that is still the same process,
    then wait up to ``wait_s`` for them to be gone: a signal is delivered asynchronously,
    and on a loaded machine a killed process can take a moment to exit."""

    def same(pid: int, start: str) -> bool:  # still the process of the snapshot
        stat = _proc_stat(pid)
        return stat is not None and stat[1] == start

    for pid, start in tree.items():
        if same(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.time() + wait_s
    while time.time() < deadline and any(same(p, start) for p, start in tree.items()):
        time.sleep(0.05)


def descendants(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid`` (children first-level and below), pid -> start time.

    Flower's SuperLink and SuperNodes start ``flower-superexec`` in a new session, which
    starts the app processes: killing our process groups alone would miss them.
    """
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            starts[int(entry.name)] = stat[1]
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p in found or p not in starts:
            continue
        found[p] = starts[p]
        todo.extend(children.get(p, []))
    return found


@dataclass
class Managed:
    """A process we started, in its own process group, logging to a file."""

    name: str
    proc: subprocess.Popen
    log: Path
    tree: dict[int, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Deployment:
    """A SuperLink, its SuperNodes and runs, all under one folder; a context manager.

    Args:
        directory: the deployment folder (created).
        host: the address the SuperLink listens on and SuperNodes dial (loopback default).
        port: the SuperLink's HTTPS port (Fleet, Control and Runtime APIs); 0 = a free one.
        app_dir: the Flower app to submit (the project root).
        bin_dir: where ``flower-superlink``, ``flower-supernode`` and ``flwr`` are (default:
            next to the running Python, i.e. the virtual environment).
        auth: run the SuperLink with ``--enable-supernode-auth``.

    Examples:
        >>> with Deployment(Path("/tmp/dep")) as d:  # doctest: +SKIP
        ...     d.start_superlink()
        ...     d.start_supernode(NodeSpec("market1501", "market1501", "/data"))
        ...     d.wait_for_nodes(1)
        ...     d.run({"overrides": "data=tiny", "output-dir": "/tmp/run"})
    """

    def __init__(
        self,
        directory: Path,
        host: str = LOOPBACK,
        port: int = 0,
        app_dir: Path = PROJECT_ROOT,
        bin_dir: Path | None = None,
        auth: bool = True,
    ) -> None:
        self.dir = Path(directory).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.app_dir = Path(app_dir).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else Path(sys.executable).parent
        self.auth = auth
        self.tls = make_certificates(self.dir / "tls", hosts=_hosts_for(host))
        self.flwr_home = self.dir / "flwr-home"
        self.logs = self.dir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.procs: list[Managed] = []
        self.node_ids: dict[str, int] = {}
        self._write_connection()

    # -- environment ----------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _exe(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.is_file():
            found = shutil.which(name)
            if not found:
                raise DeployError(f"{name} not found in {self.bin_dir} or on PATH")
            return found
        return str(path)

    def env(self, flwr_home: Path | None = None) -> dict[str, str]:
        """Environment for Flower processes: private FLWR_HOME, our venv first on PATH
        (Flower starts ``flower-superexec``/``flwr-serverapp``/``flwr-clientapp`` by name),
        no runtime ``uv sync``, no telemetry, no update checks."""
        env = dict(os.environ)
        env["FLWR_HOME"] = str(flwr_home or self.flwr_home)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _write_connection(self) -> None:
        """``$FLWR_HOME/config.toml`` with one connection, ``fedreid``, as the default."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        text = (
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\n'
            f'root-certificates = "{self.tls.ca_cert}"\n'
        )
        (self.flwr_home / "config.toml").write_text(text)

    # -- processes -----------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Managed:
        log = self.logs / f"{name}.log"
        fh = log.open("ab")
        try:
            proc = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.dir,
                start_new_session=True,
            )
        finally:
            fh.close()
        managed = Managed(name, proc, log)
        self.procs.append(managed)
        self._save_pids()
        return managed

    def _save_pids(self) -> None:
        pids = {m.name: m.proc.pid for m in self.procs if m.alive()}
        (self.dir / "pids.json").write_text(json.dumps(pids, indent=1))

    def superlink_argv(self) -> list[str]:
        """The ``flower-superlink`` command line: TLS on every API, SuperNode auth, no
        runtime dependency installation."""
        argv = [
            self._exe("flower-superlink"),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--ssl-ca-certfile",
            str(self.tls.ca_cert),
            "--ssl-certfile",
            str(self.tls.server_cert),
            "--ssl-keyfile",
            str(self.tls.server_key),
            "--disable-runtime-dependency-installation",
        ]
        if self.auth:
            argv.append("--enable-supernode-auth")
        return argv

    def supernode_argv(
        self, node: NodeSpec, key: Path, port: int = 0, max_wait_time: float | None = None
    ) -> list[str]:
        """The ``flower-supernode`` command line for ``node`` (its private ``key``; ``port``:
        its local Runtime API port, 0 = a free one)."""
        argv = [
            self._exe("flower-supernode"),
            "--superlink",
            self.address,
            "--root-certificates",
            str(self.tls.ca_cert),
            "--host",
            LOOPBACK,
            "--port",
            str(port or free_port()),
            "--node-config",
            node.node_config(),
        ]
        if self.auth:
            argv += ["--auth-supernode-private-key", str(key)]
        if max_wait_time is not None:
            argv += ["--max-wait-time", str(max_wait_time)]
        return argv

    def start_superlink(self, timeout: float = 60.0) -> Managed:
        """Start ``flower-superlink`` (:meth:`superlink_argv`) and wait until it answers TLS."""
        argv = self.superlink_argv()
        link = self._spawn("superlink", argv, self.env())
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not link.alive():
                raise DeployError(
                    f"flower-superlink exited ({link.proc.returncode}); "
                    f"see {link.log}:\n{link.tail()}"
                )
            if _tls_ready(self.host, self.port, self.tls.ca_cert):
                return link
            time.sleep(0.3)
        raise DeployError(
            f"flower-superlink did not answer on {self.address} within "
            f"{timeout:.0f}s; see {link.log}"
        )

    def flwr(
        self, *args: str, timeout: float = 120.0, check: bool = True, log_name: str = "flwr"
    ) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this deployment (its own FLWR_HOME)."""
        argv = [self._exe("flwr"), *args]
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.dir,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        with (self.logs / f"{log_name}.log").open("a") as fh:
            fh.write(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}\n[exit {res.returncode}]\n")
        if check and res.returncode != 0:
            raise DeployError(
                f"`flwr {' '.join(args)}` failed ({res.returncode}): "
                f"{(res.stderr or res.stdout).strip()[-2000:]}"
            )
        return res

    def register(self, name: str, public_key: Path) -> int:
        """``flwr supernode register KEY.pub fedreid``; returns the SuperLink's node id."""
        res = self.flwr(
            "supernode",
            "register",
            str(public_key),
            CONNECTION,
            "--format",
            "json",
            log_name="flwr-register",
        )
        payload = _last_json(res.stdout)
        if not payload.get("success"):
            raise DeployError(f"registering {name} failed: {res.stdout.strip()}")
        node_id = int(payload["node-id"])
        self.node_ids[name] = node_id
        return node_id

    def start_supernode(
        self, node: NodeSpec, key: Path | None = None, max_wait_time: float | None = None
    ) -> Managed:
        """Create (if needed) and register the node's key, then start ``flower-supernode``.

        Args:
            node: which data the node owns (its ``--node-config``).
            key: private key to use; default ``<dir>/keys/<name>`` (made if missing).
                With ``node.register=False`` the key is not registered: the SuperLink must
                refuse the node.
            max_wait_time: seconds the node keeps trying to connect (None: forever).
        """
        home = self.dir / "nodes" / node.name
        home.mkdir(parents=True, exist_ok=True)
        if key is None:
            key, public = make_node_key(self.dir / "keys", node.name)
        else:
            public = key.with_name(key.name + ".pub")
        if self.auth and node.register and node.name not in self.node_ids:
            self.register(node.name, public)
        argv = self.supernode_argv(node, key, max_wait_time=max_wait_time)
        return self._spawn(f"supernode-{node.name}", argv, self.env(home / "flwr-home"))

    def restart_supernode(
        self, node: NodeSpec, timeout: float = 240.0, settle: float = 10.0, pause: float = 10.0
    ) -> Managed:
        """Start a SuperNode again after a crash, retrying until the SuperLink takes it back.

        A SuperNode that died without saying goodbye stays ``online`` at the SuperLink until
        its heartbeat expires (Flower 1.42: 2 x 30 s); until then activating the same key
        fails and ``flower-supernode`` exits with code 305. This retries every ``pause``
        seconds until a started node is still running after ``settle`` seconds and has
        logged its node id. Its head comes back from its ``state-dir``.
        """
        deadline = time.time() + timeout
        name = f"supernode-{node.name}"
        for m in self.procs:
            if m.name == name and m.alive():
                raise DeployError(f"{name} is still running (pid {m.proc.pid})")
        log = self.logs / f"{name}.log"
        while True:
            offset = log.stat().st_size if log.exists() else 0
            managed = self.start_supernode(node)
            started = time.time()
            while managed.alive() and time.time() < deadline:
                with log.open("rb") as fh:
                    fh.seek(offset)
                    connected = b"SuperNode ID" in fh.read()
                if connected and time.time() - started >= settle:
                    return managed
                time.sleep(0.5)
            if managed.alive() or time.time() + pause > deadline:
                raise DeployError(f"{name} was not taken back within {timeout:.0f}s; see {log}")
            time.sleep(pause)

    def online_nodes(self) -> list[dict]:
        """The SuperNodes ``flwr supernode ls`` reports online (empty if it fails)."""
        res = self.flwr(
            "supernode", "ls", CONNECTION, "--format", "json", check=False, log_name="flwr-ls"
        )
        if res.returncode != 0:
            return []
        nodes = _last_json(res.stdout).get("nodes", [])
        return [n for n in nodes if str(n.get("status", "")).lower() == "online"]

    def wait_for_nodes(self, count: int, timeout: float = 90.0, poll: float = 2.0) -> list[dict]:
        """Wait until ``count`` SuperNodes are online."""
        deadline = time.time() + timeout
        online: list[dict] = []
        while time.time() < deadline:
            self._check_alive()
            online = self.online_nodes()
            if len(online) >= count:
                return online
            time.sleep(poll)
        raise DeployError(
            f"only {len(online)} of {count} SuperNodes came online within "
            f"{timeout:.0f}s; see {self.logs}"
        )

    def _check_alive(self, names: Iterable[str] = ("superlink",)) -> None:
        for m in self.procs:
            if m.name in names and not m.alive():
                raise DeployError(
                    f"{m.name} exited ({m.proc.returncode}); see {m.log}:\n{m.tail()}"
                )

    def submit(self, run_config: dict[str, str | int | float | bool]) -> int:
        """``flwr run <app> fedreid --run-config run.toml``; returns the run id."""
        import tomli_w

        path = self.dir / f"run-config-{int(time.time() * 1000)}.toml"
        path.write_text(tomli_w.dumps(dict(run_config)))
        res = self.flwr(
            "run",
            str(self.app_dir),
            CONNECTION,
            "--run-config",
            str(path),
            "--format",
            "json",
            log_name="flwr-run",
            timeout=300,
        )
        payload = _last_json(res.stdout)
        if not payload.get("success") or not payload.get("run-id"):
            raise DeployError(f"flwr run did not start a run: {res.stdout.strip()}")
        return int(payload["run-id"])

    def run_status(self, run_id: int) -> str:
        """The run's status text, e.g. ``running`` or ``finished:completed``."""
        res = self.flwr(
            "ls",
            CONNECTION,
            "--run-id",
            str(run_id),
            "--format",
            "json",
            check=False,
            log_name="flwr-ls",
        )
        if res.returncode != 0:
            return "unknown"
        runs = _last_json(res.stdout).get("runs", [])
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def save_run_log(self, run_id: int) -> Path:
        """``flwr log RUN --show`` (the ServerApp's output) into ``logs/run-<id>.log``."""
        path = self.logs / f"run-{run_id}.log"
        res = self.flwr("log", str(run_id), CONNECTION, "--show", check=False, log_name="flwr-log")
        path.write_text(res.stdout + res.stderr)
        return path

    def wait_run(
        self,
        run_id: int,
        results: Path,
        timeout: float = 600.0,
        poll: float = 1.0,
        status_every: float = 10.0,
    ) -> dict:
        """Wait until the run ends; returns ``results.json`` (raises if it did not finish).

        Watches ``results.json`` (cheap) and asks the SuperLink for the run's status every
        ``status_every`` seconds, so a failed run is reported without waiting for the timeout.
        """
        deadline = time.time() + timeout
        next_status = time.time() + status_every
        status = "unknown"
        try:
            while time.time() < deadline:
                self._check_alive()
                done = _read_status(results) == "finished"
                if done or time.time() >= next_status:
                    status = self.run_status(run_id)
                    next_status = time.time() + status_every
                    if status.startswith("finished"):
                        break
                time.sleep(poll)
            else:
                raise DeployError(
                    f"run {run_id} still {status} after {timeout:.0f}s; see {self.logs}"
                )
        finally:
            log = self.save_run_log(run_id)
        payload = json.loads(results.read_text()) if results.is_file() else {}
        if status != "finished:completed" or payload.get("status") != "finished":
            raise DeployError(
                f"run {run_id} ended {status}, results.json status "
                f"{payload.get('status')!r}; see {log}"
            )
        return payload

    def run(
        self,
        run_config: dict[str, str | int | float | bool],
        timeout: float = 600.0,
    ) -> dict:
        """Submit a run and wait for its results (``output-dir`` must be absolute)."""
        out = Path(str(run_config.get("output-dir", "")))
        if not out.is_absolute():
            raise DeployError("run config output-dir must be an absolute path")
        return self.wait_run(self.submit(run_config), out / "results.json", timeout)

    # -- stopping ------------------------------------------------------------------------
    def stop(self, grace: float = 10.0) -> None:
        """Stop every process this deployment started, and their descendants.

        SIGTERM to each process group (SuperNodes first, SuperLink last), a grace period,
        then SIGKILL to whatever of those processes (recorded by pid and start time) is left.
        """
        for m in self.procs:
            if m.alive():
                m.tree = descendants(m.proc.pid)
        for m in sorted(self.procs, key=lambda m: m.name == "superlink"):
            if m.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(m.proc.pid, signal.SIGTERM)
        deadline = time.time() + grace
        for m in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(timeout=max(0.1, deadline - time.time()))
        for m in self.procs:
            if m.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(m.proc.pid, signal.SIGKILL)
                m.proc.wait(timeout=5)
            kill_leftovers(m.tree)
        self._save_pids()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _hosts_for(host: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*DEFAULT_HOSTS, host]))


def _tls_ready(host: str, port: int, ca_cert: Path) -> bool:
    """True when a TLS handshake with the SuperLink succeeds against our CA."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with (
            socket.create_connection((host, port), timeout=2) as sock,
            ctx.wrap_socket(sock, server_hostname=host),
        ):
            return True
    except OSError:
        return False


def _read_status(results: Path) -> str:
    """``status`` of a results.json ("" while it does not exist or is being replaced)."""
    try:
        return str(json.loads(results.read_text()).get("status", ""))
    except (OSError, ValueError):
        return ""


def _last_json(text: str) -> dict:
    """The JSON object a ``flwr ... --format json`` call printed (last one wins)."""
    start = text.find("{")
    while start >= 0:
        try:
            obj = json.loads(text[start:])
            return obj if isinstance(obj, dict) else {}
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    return {}


def stop_from_pidfile(directory: Path, grace: float = 10.0) -> list[str]:
    """Stop the processes listed in ``<directory>/pids.json`` (the ``stop`` command)."""
    path = Path(directory) / "pids.json"
    if not path.is_file():
        return []
    pids: dict[str, int] = json.loads(path.read_text())
    trees = {name: descendants(pid) for name, pid in pids.items()}
    for _name, pid in sorted(pids.items(), key=lambda kv: kv[0] == "superlink"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(_proc_stat(p) for p in pids.values()):
        time.sleep(0.2)
    for name, pid in pids.items():
        if _proc_stat(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        kill_leftovers(trees[name])
    path.write_text("{}")
    return sorted(pids)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_node(text: str) -> NodeSpec:
    """``NAME=DATASET:DATA_ROOT`` (or ``DATASET:DATA_ROOT``, named after the dataset)."""
    name, _, rest = text.rpartition("=") if "=" in text else ("", "", text)
    dataset, sep, root = rest.partition(":")
    if not sep or not dataset or not root:
        raise argparse.ArgumentTypeError(f"--node {text!r}: expected NAME=DATASET:DATA_ROOT")
    return NodeSpec(name=name or dataset, dataset=dataset, data_root=root)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedreid.deploy``: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m fedreid.deploy", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("certs", help="create the CA and the SuperLink certificate")
    p.add_argument("dir", type=Path)
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="extra SAN (name or IP) besides 127.0.0.1 and localhost",
    )
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("keys", help="create SuperNode key pairs")
    p.add_argument("dir", type=Path)
    p.add_argument("names", nargs="+")
    p = sub.add_parser("up", help="SuperLink + SuperNodes + one run, then stop")
    p.add_argument("dir", type=Path)
    p.add_argument(
        "--node",
        type=parse_node,
        action="append",
        required=True,
        help="NAME=DATASET:DATA_ROOT (repeat per SuperNode)",
    )
    p.add_argument("--overrides", default="", help="hydra overrides for the run config")
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--host", default=LOOPBACK)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--keep", action="store_true", help="leave the federation running")
    p = sub.add_parser("stop", help="stop the processes of a deployment folder")
    p.add_argument("dir", type=Path)
    p = sub.add_parser(
        "commands", help="print the command of every step, for SuperNodes on other machines"
    )
    p.add_argument("dir", type=Path)
    p.add_argument("--node", type=parse_node, action="append", required=True)
    p.add_argument("--host", default=LOOPBACK, help="the SuperLink's address as sites see it")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--overrides", default="")
    p.add_argument("--output-dir", type=Path, default=Path("/srv/fedreid/run"))
    args = parser.parse_args(argv)

    try:
        if args.cmd == "certs":
            files = make_certificates(
                args.dir / "tls", hosts=_hosts_for_all(args.host), overwrite=args.overwrite
            )
            print(f"CA: {files.ca_cert}\nSuperLink: {files.server_cert} {files.server_key}")
        elif args.cmd == "keys":
            for name in args.names:
                private, public = make_node_key(args.dir / "keys", name)
                print(f"{name}: {private} {public}")
        elif args.cmd == "stop":
            print("stopped:", ", ".join(stop_from_pidfile(args.dir)) or "nothing")
        elif args.cmd == "up":
            return _up(args)
        elif args.cmd == "commands":
            print(commands(args))
    except FedReIDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _hosts_for_all(extra: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*DEFAULT_HOSTS, *extra]))


def commands(args: argparse.Namespace) -> str:
    """Every step as a shell command, in order (certificates and keys are created now)."""
    import shlex

    dep = Deployment(args.dir, host=args.host, port=args.port)
    home = f"FLWR_HOME={shlex.quote(str(dep.flwr_home))}"
    py = shlex.quote(sys.executable)
    lines = [
        "# 1. server: CA + SuperLink certificate (done: " + str(dep.tls.ca_cert.parent) + ")",
        f"{py} -m fedreid.deploy certs {shlex.quote(str(dep.dir))} --host {args.host}",
        "# 2. server: the SuperLink (Fleet, Control and Runtime APIs on one TLS port)",
        f"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 {shlex.join(dep.superlink_argv())}",
        "# 3. each site: a key pair (keep the private key there; send the .pub)",
    ]
    keys = {}
    for node in args.node:
        keys[node.name] = make_node_key(dep.dir / "keys", node.name)
        lines.append(f"{py} -m fedreid.deploy keys {shlex.quote(str(dep.dir))} {node.name}")
    lines.append("# 4. operator: register each public key (connection in $FLWR_HOME/config.toml)")
    for node in args.node:
        lines.append(
            f"{home} flwr supernode register {shlex.quote(str(keys[node.name][1]))} {CONNECTION}"
        )
    lines.append("# 5. each site: its SuperNode (copy ca.crt there; 9094 = its local Runtime API)")
    for node in args.node:
        node.state_dir = node.state_dir or "/var/lib/fedreid"
        argv = dep.supernode_argv(node, keys[node.name][0], port=9094)
        lines.append(shlex.join(argv))
    run_config = (
        f"overrides={json.dumps(args.overrides)} output-dir={json.dumps(str(args.output_dir))}"
    )
    lines += [
        "# 6. operator: submit the app, follow its log",
        f"{home} flwr run {shlex.quote(str(dep.app_dir))} {CONNECTION} "
        f"--run-config {shlex.quote(run_config)} --stream",
        "# 7. stop: Ctrl-C (SIGTERM) each SuperNode, then the SuperLink",
    ]
    return "\n".join(lines)


def check_node_data(node: NodeSpec, default_source: str = "synthetic") -> int:
    """Read the SuperNode's dataset as its ClientApp will (every image decoded), before anything
    starts: a node whose data cannot be loaded fails ``deploy up`` loudly, naming it."""
    from fedreid.data.scenarios import ClientSpec
    from fedreid.data.types import verify_images

    spec = ClientSpec(
        name=node.name,
        dataset=node.dataset,
        root=str(Path(node.data_root).resolve()),
        source=node.source or default_source,
    )
    try:
        ds = spec.load()
        if not ds.train or not ds.query or not ds.gallery:
            raise DeployError("empty train, query or gallery split")
        verify_images(ds)
    except FedReIDError as err:
        raise DeployError(f"SuperNode {node.name}: its data cannot be loaded: {err}") from err
    return len(ds.train)


def _up(args: argparse.Namespace) -> int:
    source = "real" if "data.source=real" in args.overrides else "synthetic"
    for node in args.node:
        check_node_data(node, source)
    dep = Deployment(args.dir, host=args.host, port=args.port)
    try:
        dep.start_superlink()
        print(f"SuperLink on {dep.address} (logs: {dep.logs})")
        for node in args.node:
            node.state_dir = node.state_dir or str(dep.dir / "nodes" / node.name / "state")
            dep.start_supernode(node)
        dep.wait_for_nodes(len(args.node))
        print(f"{len(args.node)} SuperNodes online; submitting the run")
        out = args.output_dir.resolve()
        payload = dep.run(
            {"overrides": args.overrides, "output-dir": str(out)}, timeout=args.timeout
        )
        print(f"finished {len(payload.get('rounds', []))} rounds: {out / 'results.json'}")
        failed = payload.get("failed_clients", [])
        if failed:
            print(
                f"error: SuperNode(s) {', '.join(failed)} sent no valid training reply in any "
                f"round; see {dep.logs}",
                file=sys.stderr,
            )
            return 3
    finally:
        if not args.keep:
            dep.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
