"""The runtime spec and the resolv.conf / hosts of each RUN network (no root, no runc)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import RuntimeFailure
from kiln.executor import network
from kiln.executor.network import HOSTS, find_slirp4netns, resolv_conf_text, step_network
from kiln.executor.spec import HostMount, RunSpec, runtime_spec
from kiln.executor.users import Identity


def _spec(mode: str, binds: list[HostMount] | None = None) -> RunSpec:
    return RunSpec(Path("/rootfs"), ["true"], [], "/", Identity(0, 0), mode, binds or [])


def _mount(config: dict, destination: str) -> dict | None:
    found = [m for m in config["mounts"] if m["destination"] == destination]
    return found[0] if found else None


def test_default_joins_the_given_namespace_with_its_own_sysfs():
    config = runtime_spec(_spec("default"), netns="/proc/1/fd/5")
    assert {"type": "network", "path": "/proc/1/fd/5"} in config["linux"]["namespaces"]
    sysfs = _mount(config, "/sys")
    assert sysfs is not None and sysfs["type"] == "sysfs" and "ro" in sysfs["options"]
    cgroup = _mount(config, "/sys/fs/cgroup")
    assert cgroup is not None and cgroup["type"] == "cgroup" and "ro" in cgroup["options"]


def test_none_gets_a_new_empty_namespace_and_host_the_hosts():
    none = runtime_spec(_spec("none"))
    assert {"type": "network"} in none["linux"]["namespaces"]
    assert _mount(none, "/sys")["type"] == "sysfs"
    host = runtime_spec(_spec("host"))
    assert "network" not in [n["type"] for n in host["linux"]["namespaces"]]
    assert _mount(host, "/sys")["type"] == "bind"
    assert _mount(host, "/sys/fs/cgroup") is None


def test_etc_files_are_bound_before_the_steps_own_mounts():
    own = HostMount(Path("/ctx/hosts"), "/etc/hosts")
    files = [
        HostMount(Path("/b/resolv.conf"), "/etc/resolv.conf"),
        HostMount(Path("/b/hosts"), "/etc/hosts"),
    ]
    config = runtime_spec(_spec("default", [own]), netns="/n", etc_files=files)
    binds = [(m["source"], m["destination"]) for m in config["mounts"] if m["type"] == "bind"]
    assert binds == [("/b/resolv.conf", "/etc/resolv.conf"), ("/b/hosts", "/etc/hosts"),
                     ("/ctx/hosts", "/etc/hosts")]  # fmt: skip


def test_resolv_conf_names_the_forwarder_only_and_keeps_search_and_options():
    host = "# by systemd\nnameserver 127.0.0.53\nnameserver 10.1.1.1\nsearch corp.example\n" \
           "options edns0 trust-ad\n"  # fmt: skip
    assert resolv_conf_text(host) == (
        "nameserver 10.0.2.3\nsearch corp.example\noptions edns0 trust-ad\n"
    )
    assert resolv_conf_text("") == "nameserver 10.0.2.3\n"


def test_host_and_none_files(tmp_path: Path):
    with step_network("host", tmp_path) as net:
        assert net.netns is None
        assert [m.source for m in net.files] == [
            p for p in (Path("/etc/resolv.conf"), Path("/etc/hosts")) if p.exists()
        ]
    with step_network("none", tmp_path) as net:
        assert net.netns is None
        hosts = [m for m in net.files if m.destination == "/etc/hosts"]
        assert hosts and hosts[0].source.read_text() == HOSTS
        assert HOSTS.startswith("127.0.0.1\tlocalhost buildkitsandbox\n")


def test_missing_slirp4netns_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(network.shutil, "which", lambda *a, **k: None)
    with pytest.raises(RuntimeFailure) as info:
        find_slirp4netns()
    assert "slirp4netns not found" in str(info.value.what)
    assert "apt-get install -y slirp4netns" in (info.value.hint or "")
    assert "--network host" in (info.value.hint or "")
    with pytest.raises(RuntimeFailure), step_network("default", tmp_path):
        pass  # never reached: the check comes before any namespace
