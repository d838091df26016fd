"""RUN's networks, for real (runc, slirp4netns): ``default`` is a namespace of the step's
own that reaches the outside and DNS but not the host's loopback; ``host`` is the host's;
``none`` has a loopback only. Servers are on this machine (there is no internet here):
on 127.0.0.1, and on an address of the machine that is not on its loopback."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.fixtures.build import make_context

pytestmark = pytest.mark.integration

SERVER_LIFETIME = 120.0  # seconds: a server a test forgot can never outlive this


@pytest.fixture(autouse=True)
def _need_slirp4netns(need_root: None) -> None:
    if not shutil.which("slirp4netns"):
        pytest.skip("RUN's default network needs slirp4netns: apt-get install slirp4netns")


@contextmanager
def _http_server(host: str) -> Iterator[str]:
    """An HTTP server on *host* answering ``/ping`` with ``pong`` from a thread, for the
    block (and never longer than SERVER_LIFETIME); yields ``host:port``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = b"pong" if self.path == "/ping" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    timer = threading.Timer(SERVER_LIFETIME, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        yield f"{host}:{server.server_address[1]}"
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()


@pytest.fixture
def loopback_server() -> Iterator[str]:
    with _http_server("127.0.0.1") as address:
        yield address


def _route_source() -> str | None:
    """The machine's address towards its default route (nothing is sent: a UDP socket
    only picks its source), unless that is a loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.fixture
def outside_address() -> Iterator[str]:
    """An IPv4 address of this machine off its loopback: the default route's source, or
    one on a dummy interface made for the test (removed after it)."""
    address = _route_source()
    if address is not None:
        yield address
        return
    if not shutil.which("ip"):
        pytest.skip("no non-loopback address and no ip(8) to make one (apt-get install iproute2)")
    name = f"kilnt{secrets.token_hex(2)}"
    address = f"198.18.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    subprocess.run(["ip", "link", "add", name, "type", "dummy"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield address
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


@pytest.fixture
def outside_server(outside_address: str) -> Iterator[str]:
    with _http_server(outside_address) as address:
        yield address


def _build(kiln, ctx: Path, out: Path, *args: str) -> Path:
    kiln("build", *args, "-o", f"type=local,dest={out}", ctx).check()
    return out


def test_default_network_does_not_reach_the_hosts_loopback(
    kiln, busybox_image, tmp_path: Path, loopback_server: str
):
    url = f"http://{loopback_server}/ping"
    port = loopback_server.rsplit(":", 1)[1]
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image}
RUN (wget -q -O /default {url} || echo unreachable > /default)
RUN (nc -w 3 10.0.2.2 {port} </dev/null && echo reached > /gateway || echo unreachable > /gateway)
RUN --network=host wget -q -O /host {url}
""",
    )
    out = _build(kiln, ctx, tmp_path / "out")
    assert (out / "default").read_text() == "unreachable\n"
    # slirp4netns's alias of the host (10.0.2.2) does not lead to its loopback either
    assert (out / "gateway").read_text() == "unreachable\n"
    assert (out / "host").read_text() == "pong"


def test_cli_network_host_gives_every_step_the_hosts_network(
    kiln, busybox_image, tmp_path: Path, loopback_server: str
):
    ctx = make_context(
        tmp_path / "ctx",
        f"FROM {busybox_image}\nRUN wget -q -O /host http://{loopback_server}/ping\n",
    )
    out = _build(kiln, ctx, tmp_path / "out", "--network", "host")
    assert (out / "host").read_text() == "pong"


def test_default_network_reaches_the_outside(
    kiln, busybox_image, tmp_path: Path, outside_server: str
):
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image}
RUN wget -q -O /outside http://{outside_server}/ping
RUN cat /etc/resolv.conf > /resolv && cat /etc/hosts > /hosts && ls /sys/class/net > /ifaces
RUN grep -E ' /sys(/fs/cgroup)? ' /proc/self/mountinfo > /sys-mounts
RUN --network=none ls /sys/class/net > /none-ifaces && cat /proc/net/dev > /none-dev
""",
    )
    out = _build(kiln, ctx, tmp_path / "out")
    assert (out / "outside").read_text() == "pong"
    resolv = (out / "resolv").read_text().splitlines()
    assert [line for line in resolv if line.startswith("nameserver")] == ["nameserver 10.0.2.3"]
    assert (out / "hosts").read_text().splitlines() == [
        "127.0.0.1\tlocalhost buildkitsandbox",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]  # BuildKit's
    assert (out / "ifaces").read_text().split() == ["lo", "tap0"]  # the step's own sysfs
    mounts = [line.split() for line in (out / "sys-mounts").read_text().splitlines()]
    sysfs = [m for m in mounts if m[4] == "/sys"]
    assert sysfs and "ro" in sysfs[0][5].split(",") and "sysfs" in sysfs[0]
    assert any(m[4].startswith("/sys/fs/cgroup") for m in mounts)  # as Docker
    # none: a loopback and nothing else
    assert (out / "none-ifaces").read_text().split() == ["lo"]
    devices = [line.split(":")[0].strip() for line in (out / "none-dev").read_text().splitlines()]
    assert devices[2:] == ["lo"]


class _DnsStub:
    """A DNS server on a loopback address answering A queries for one name with one
    address (NXDOMAIN for anything else), in a thread, for a bounded time."""

    def __init__(self, name: str, answer: str) -> None:
        self.name, self.answer = name, answer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.address = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.53"
        try:
            self.sock.bind((self.address, 53))
        except OSError as exc:
            self.sock.close()
            pytest.skip(f"cannot serve DNS on {self.address}:53 here: {exc}")
        self.sock.settimeout(0.2)
        self.queries: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + SERVER_LIFETIME
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                continue
            labels, i = [], 12
            while i < len(data) and data[i]:
                labels.append(data[i + 1 : i + 1 + data[i]].decode(errors="replace"))
                i += data[i] + 1
            qtype = struct.unpack("!H", data[i + 1 : i + 3])[0]
            question = data[12 : i + 5]
            name = ".".join(labels).lower()
            self.queries.append(name)
            known = name == self.name
            answers = b""
            if known and qtype == 1:
                answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4)
                answers += socket.inet_aton(self.answer)
            flags = 0x8180 if known else 0x8183  # NOERROR / NXDOMAIN
            header = struct.pack("!HHHHHH", data[0] << 8 | data[1], flags, 1,
                                 1 if answers else 0, 0, 0)  # fmt: skip
            self.sock.sendto(header + question + answers, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_dns_goes_through_the_hosts_resolver_even_on_its_loopback(
    busybox_image, kiln_root: Path, tmp_path: Path, outside_server: str
):
    """The host's resolv.conf names a resolver on its loopback (as systemd-resolved's
    127.0.0.53): a step still resolves names through slirp4netns's forwarder. kiln runs
    in a mount namespace of its own whose /etc/resolv.conf names the test's resolver."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1) (util-linux)")
    name = f"registry-{secrets.token_hex(3)}.kiln.test"
    host, port = outside_server.rsplit(":", 1)
    dns = _DnsStub(name, host)
    try:
        resolv = tmp_path / "resolv.conf"
        resolv.write_text(f"nameserver {dns.address}\nsearch kiln.test\noptions ndots:1\n")
        ctx = make_context(
            tmp_path / "ctx",
            f"""FROM {busybox_image}
RUN nslookup {name} > /lookup; cat /etc/resolv.conf > /resolv
RUN wget -q -O /by-name http://{name}:{port}/ping
""",
        )
        out = tmp_path / "out"
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        run = subprocess.run(
            ["unshare", "--mount", "--", "sh", "-c", script, str(resolv), sys.executable,
             "-m", "kiln.cli.main", "build", "--progress", "plain", "-o",
             f"type=local,dest={out}", str(ctx)],
            env={**os.environ, "KILN_ROOT": str(kiln_root)},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        dns.close()
    assert run.returncode == 0, run.stderr
    assert name in dns.queries
    assert host in (out / "lookup").read_text()
    assert (out / "by-name").read_text() == "pong"
    assert (out / "resolv").read_text() == (
        "nameserver 10.0.2.3\nsearch kiln.test\noptions ndots:1\n"
    )


def _slirp_of(pid: int) -> list[int]:
    """slirp4netns processes serving a namespace of kiln process *pid*."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                argv
                and argv[0].endswith(b"slirp4netns")
                and any(a.startswith(f"/proc/{pid}/fd/".encode()) for a in argv)
            ):
                found.append(int(entry.name))
    return found


def test_the_network_process_stops_with_the_step(busybox_image, kiln_root: Path, tmp_path: Path):
    """slirp4netns lives while the step runs and is gone after it, also when it fails."""
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN sleep 2 && exit 3\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli.main", "build", "--progress", "plain", str(ctx)],
        env={**os.environ, "KILN_ROOT": str(kiln_root)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        seen: list[int] = []
        while not seen and proc.poll() is None and time.monotonic() < deadline:
            seen = _slirp_of(proc.pid)
            time.sleep(0.05)
        assert seen, "no slirp4netns while the step ran"
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and b"exit code: 3" in err
    assert not any(Path(f"/proc/{pid}").exists() for pid in seen)
