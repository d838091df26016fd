"""The network of one RUN step, and the resolv.conf and hosts that go with it.

- ``default``: a network namespace of the step's own, connected to the outside by
  slirp4netns (user-mode TCP/IP in a process on the host). Outbound connections and DNS
  (slirp4netns's forwarder at 10.0.2.3, which asks the host's resolver, a loopback one
  included) work; the host's loopback does not (``--disable-host-loopback``), so a step
  never reaches a registry, a cache server or anything else listening on 127.0.0.1 — as
  Docker and BuildKit sandbox their steps.
- ``none``: a new empty namespace (loopback only), made by the runtime.
- ``host``: the host's namespace and its resolv.conf and hosts.

The namespace is created by a short-lived thread and held by a file descriptor of this
process only, never bound to a path: whatever happens to kiln, the kernel frees it with
the step's last process. slirp4netns stops when the step is over, and by itself when kiln
dies (its exit pipe closes).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import RuntimeFailure
from kiln.executor.spec import HOSTNAME, HostMount

SLIRP4NETNS = "slirp4netns"
FORWARDER = "10.0.2.3"  # slirp4netns's DNS forwarder (its default 10.0.2.0/24 network)
HOSTS = f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 2.0
_CLONE_NEWNET = 0x40000000
_INSTALL = "apt-get install -y slirp4netns"


@dataclass
class StepNetwork:
    """What the runtime spec needs: the namespace to join (None: the runtime decides by
    mode) and the files bound at /etc/resolv.conf and /etc/hosts."""

    netns: str | None = None
    files: list[HostMount] = field(default_factory=list)


@contextlib.contextmanager
def step_network(mode: str, folder: Path) -> Iterator[StepNetwork]:
    """The network of a step in *mode*, for as long as the block runs; generated files
    go into *folder* (the step's bundle)."""
    if mode == "host":
        yield StepNetwork(None, host_files())
        return
    hosts = _write(folder / "hosts", HOSTS)
    if mode == "none":
        resolv = [m for m in host_files() if m.destination == "/etc/resolv.conf"]
        yield StepNetwork(None, [*resolv, HostMount(hosts, "/etc/hosts")])
        return
    binary = find_slirp4netns()
    resolv_conf = _write(folder / "resolv.conf", resolv_conf_text(_read("/etc/resolv.conf")))
    files = [HostMount(resolv_conf, "/etc/resolv.conf"), HostMount(hosts, "/etc/hosts")]
    nsfd = _new_netns()
    try:
        netns = f"/proc/{os.getpid()}/fd/{nsfd}"
        with _slirp4netns(binary, netns, folder / "slirp4netns.log"):
            yield StepNetwork(netns, files)
    finally:
        os.close(nsfd)


def host_files() -> list[HostMount]:
    return [
        HostMount(path, f"/etc/{path.name}")
        for path in (Path("/etc/resolv.conf"), Path("/etc/hosts"))
        if path.exists()
    ]


def resolv_conf_text(host: str) -> str:
    """The host's resolv.conf with slirp4netns's forwarder as the one nameserver (the
    host's own may be on its loopback, out of the step's reach); search domains and
    options kept."""
    kept = [
        line.strip()
        for line in host.splitlines()
        if line.split()[:1] in (["search"], ["domain"], ["options"])
    ]
    return "\n".join([f"nameserver {FORWARDER}", *kept]) + "\n"


def find_slirp4netns() -> str:
    path = shutil.which(SLIRP4NETNS) or shutil.which(SLIRP4NETNS, path="/usr/sbin:/usr/bin")
    if path is None:
        raise RuntimeFailure(
            "slirp4netns not found: RUN steps use it for their own network (--network "
            "default), which reaches the outside but not the host's loopback",
            hint=f"install it: {_INSTALL} (or give the step the host's network: "
            "--network host, RUN --network=host)",
        )
    return path


@contextlib.contextmanager
def _slirp4netns(binary: str, netns: str, log: Path) -> Iterator[None]:
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    cmd = [
        binary, "--configure", "--mtu=65520", "--disable-host-loopback",
        "--enable-sandbox", "--netns-type=path", f"--ready-fd={ready_w}",
        f"--exit-fd={exit_r}", netns, "tap0",
    ]  # fmt: skip
    try:
        with log.open("wb") as err:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                pass_fds=(ready_w, exit_r),
            )  # fmt: skip
    except OSError as exc:
        for fd in (ready_r, ready_w, exit_r, exit_w):
            os.close(fd)
        raise RuntimeFailure(f"cannot start {binary}: {exc}", hint=_INSTALL) from exc
    os.close(ready_w)
    os.close(exit_r)
    try:
        _wait_ready(proc, ready_r, log)
        yield
    finally:
        os.close(ready_r)
        os.close(exit_w)  # slirp4netns exits when this pipe closes (also if kiln dies)
        # its exit takes the kernel ~20 ms (the tap device goes): not the step's time
        threading.Thread(target=_reap, args=(proc,), name="kiln-slirp-reaper").start()


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], ready: int, log: Path) -> None:
    poller = select.poll()  # not select(): kiln may hold more than 1024 descriptors
    poller.register(ready, select.POLLIN)
    readable = bool(poller.poll(READY_TIMEOUT * 1000))
    if readable and os.read(ready, 1) == b"1":
        return
    proc.kill()
    proc.wait()
    why = _read(str(log)).strip().splitlines()[-5:]
    raise RuntimeFailure(
        "slirp4netns could not set up the step's network"
        + ("" if readable else f" within {READY_TIMEOUT:.0f}s"),
        why="\n".join(why) or None,
        hint="run with --network host to use the host's network instead",
    )


def _new_netns() -> int:
    """A new network namespace, as a file descriptor: a thread of its own unshares it,
    opens it and ends, so no other thread of kiln ever changes namespace."""
    result: list[int | OSError] = []

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            result.append(OSError(errno, os.strerror(errno)))
            return
        try:
            result.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=body, name="kiln-netns")
    thread.start()
    thread.join()
    if not result or isinstance(result[0], OSError):
        raise RuntimeFailure(
            f"cannot create a network namespace for the step: {result[0] if result else '?'}",
            hint="kiln runs steps as root; --network host needs no namespace",
        )
    return result[0]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""
