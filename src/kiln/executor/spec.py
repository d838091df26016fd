"""The OCI runtime spec (``config.json``) kiln generates for one RUN step.

Matches what Docker/BuildKit give a build step: own mount, pid, ipc, uts and network
namespaces (the host's network only for ``--network host``), /proc, /dev, /dev/shm, /sys
read-only (a sysfs of the step's own network and its cgroups, as Docker; the host's /sys
with the host's network), the step's resolv.conf and hosts (see
:mod:`kiln.executor.network`), Docker's default capability set and masked paths.
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.executor.users import Identity

HOSTNAME = "buildkitsandbox"

DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip

MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip

READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class HostMount:
    """A host path (file or directory) made visible in the container."""

    source: Path
    destination: str
    readonly: bool = True


@dataclass(frozen=True, slots=True)
class TmpfsSpec:
    destination: str
    size: int = 0


@dataclass
class RunSpec:
    rootfs: Path
    args: list[str]
    env: list[str]
    cwd: str
    identity: Identity
    network: str  # default | host | none
    binds: list[HostMount] = field(default_factory=list)
    tmpfs: list[TmpfsSpec] = field(default_factory=list)


def base_mounts(network: str) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
    ]  # fmt: skip
    if network == "host":
        # a fresh sysfs would show the network namespace of its mounter: the host's /sys
        mounts.append(
            {"destination": "/sys", "type": "bind", "source": "/sys",
             "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
        )  # fmt: skip
    else:
        mounts += [
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["ro", "nosuid", "noexec", "nodev"]},
        ]  # fmt: skip
    return mounts


def runtime_spec(
    run: RunSpec, *, netns: str | None = None, etc_files: Sequence[HostMount] = ()
) -> dict[str, Any]:
    """The ``config.json`` of *run*: with its own network namespace unless
    ``run.network`` is ``host`` (the one at path *netns* when given, else a new empty
    one), and *etc_files* (resolv.conf, hosts) bound before the step's own mounts."""
    mounts = base_mounts(run.network)
    for tmpfs in run.tmpfs:
        options = ["nosuid", "nodev", "mode=1777"]
        if tmpfs.size:
            options.append(f"size={tmpfs.size}")
        mounts.append(
            {"destination": tmpfs.destination, "type": "tmpfs", "source": "tmpfs",
             "options": options}
        )  # fmt: skip
    for bind in [*etc_files, *run.binds]:
        options = ["rbind", "ro" if bind.readonly else "rw"]
        mounts.append(
            {"destination": bind.destination, "type": "bind", "source": str(bind.source),
             "options": options}
        )  # fmt: skip
    # Docker gives steps 1048576 open files; never more than this process may grant
    nofile = min(1048576, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if run.network != "host":
        namespaces.append({"type": "network", "path": netns} if netns else {"type": "network"})
    caps = list(DEFAULT_CAPABILITIES)
    user: dict[str, Any] = {"uid": run.identity.uid, "gid": run.identity.gid}
    if run.identity.additional_gids:
        user["additionalGids"] = list(run.identity.additional_gids)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": user,
            "args": run.args,
            "env": run.env,
            "cwd": run.cwd or "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": False,
        },
        "root": {"path": str(run.rootfs), "readonly": False},
        "hostname": HOSTNAME,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }
