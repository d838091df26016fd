"""Faults between kiln and its servers: a fault-injecting proxy (tests/fixtures/
fault_proxy.py) in front of the registry or ``kiln cache serve`` drops, delays, cuts,
truncates and refuses. kiln must retry, or fail with one clear error — and never leave a
half-written output, image tag or cache (an interrupted export keeps the previous one)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.build import make_context
from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.hostile import RegistryAPI, clean_error, sha256, tree
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(fault_proxy, registry: RegistryServer) -> FaultProxy:
    """A fault proxy in front of the test registry (kiln sees it as a registry)."""
    made: FaultProxy = fault_proxy(registry.url, lifetime=120, max_requests=400)
    return made


def base_layer(api: RegistryAPI) -> str:
    """The digest of busybox's one layer (about 1.3 MB: big enough to cut in the middle)."""
    manifest, _ = api.manifest("busybox", "latest")
    (only,) = manifest["layers"]
    return str(only["digest"])


def through(proxy: FaultProxy, busybox_image: str) -> str:
    """The busybox image, named through the proxy."""
    return f"{proxy.host}/{busybox_image.split('/', 1)[1]}"


def simple(tmp_path: Path, base: str, name: str = "ctx") -> Path:
    return make_context(tmp_path / name, f"FROM {base}\nRUN echo hi > /hi\n")


def built(kiln, ctx: Path, tmp_path: Path, **kw: Any) -> Path:
    out = tmp_path / f"out-{secrets.token_hex(3)}"
    kiln("build", "-o", f"type=local,dest={out}", ctx, **kw).check()
    assert (out / "hi").read_text() == "hi\n"
    return out


# --- pulls -------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["status", "drop", "delay"])
def test_a_flaky_manifest_answer_is_retried(kiln, busybox_image, proxy: FaultProxy, tmp_path,
                                            fault: str):  # fmt: skip
    kw = {"status": {"status": 500, "count": 2}, "drop": {"count": 1},
          "delay": {"seconds": 2.0}}[fault]  # fmt: skip
    proxy.fault(fault, match="/manifests/", method="GET", **kw)
    built(kiln, simple(tmp_path, through(proxy, busybox_image)), tmp_path)
    assert proxy.pending() == 0 and proxy.faults_used(), "the fault never happened"


def test_throttling_with_retry_after_is_honoured(
    kiln, busybox_image, api, proxy: FaultProxy, tmp_path
):
    layer = base_layer(api)
    proxy.fault("status", match=layer, method="GET", status=429, retry_after=2)
    built(kiln, simple(tmp_path, through(proxy, busybox_image)), tmp_path)
    throttled, then = proxy.seen("GET", layer)[:2]
    assert throttled.status == 429 and then.status == 200
    assert then.at - throttled.at >= 1.9, "Retry-After: 2 was not waited for"


def test_a_download_cut_mid_body_resumes_where_it_stopped(
    kiln, busybox_image, api, proxy: FaultProxy, tmp_path
):
    layer = base_layer(api)
    proxy.fault("cut", match=layer, method="GET", after=300_000, count=2)
    built(kiln, simple(tmp_path, through(proxy, busybox_image)), tmp_path)
    tries = proxy.seen("GET", layer)
    assert [t.range for t in tries] == [None, "bytes=300000-", "bytes=600000-"]
    assert tries[-1].status == 206


def test_a_truncated_answer_is_one_error_and_nothing_corrupt_is_kept(
    kiln, busybox_image, api, proxy: FaultProxy, kiln_root: Path, tmp_path
):
    """A short body with a Content-Length that agrees: well-formed, so only the digest
    tells. The build fails (or retries); a corrupt blob must never be stored."""
    layer = base_layer(api)
    proxy.fault("truncate", match=layer, method="GET", after=100_000)
    ctx = simple(tmp_path, through(proxy, busybox_image))
    out = tmp_path / "out"
    run = kiln("build", "-o", f"type=local,dest={out}", ctx)
    if run.returncode != 0:
        clean_error(run, layer, "does not match its digest", code=1)
        assert not out.exists()
    stored = kiln_root / "blobs" / "sha256"
    for blob in stored.iterdir():  # only whole, verified blobs; no partial download left
        assert not blob.name.startswith("."), blob.name
        assert sha256(blob.read_bytes()) == "sha256:" + blob.name
    built(kiln, ctx, tmp_path)  # the same root, the fault gone: a clean build


def test_a_dead_registry_is_one_error_in_bounded_time(
    kiln, busybox_image, proxy: FaultProxy, tmp_path
):
    proxy.fault("status", status=503, count=1000)
    started = time.monotonic()
    run = kiln("build", simple(tmp_path, through(proxy, busybox_image)), timeout=120)
    clean_error(run, proxy.host, "503", code=1)
    assert time.monotonic() - started < 60
    assert 1 < len(proxy.requests) <= 10, "retried without bound, or not at all"


# --- pushes and exports ------------------------------------------------------------------


def test_an_export_refused_at_the_manifest_keeps_the_previous_cache(
    kiln, busybox_image, api: RegistryAPI, proxy: FaultProxy, tmp_path
):
    name = f"hostile/faulty-{secrets.token_hex(4)}"
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo one > /one\nCOPY f /f\n",
                       {"f": "1"})  # fmt: skip
    to = ["--cache-to", f"type=registry,ref={proxy.host}/{name}:cache,mode=max"]
    kiln("build", *to, ctx, root=tmp_path / "a").check()
    before = api.manifest(name, "cache")[1]
    (ctx / "f").write_text("2")
    # an immutable tag: the registry refuses to move it (403 is final, not retried)
    proxy.fault("status", match="/manifests/cache", method="PUT", status=403, count=100)
    run = kiln("build", *to, ctx, root=tmp_path / "b")
    clean_error(run, f"{proxy.host}/{name}:cache", code=1)
    assert api.manifest(name, "cache")[1] == before  # blobs went up, the manifest did not
    (ctx / "f").write_text("1")
    again = kiln("build", "--cache-from", f"{proxy.host}/{name}:cache", ctx,
                 root=tmp_path / "c").check()  # fmt: skip
    assert again.ran == []


def test_a_dropped_upload_is_restarted_and_the_cache_is_complete(
    kiln, busybox_image, proxy: FaultProxy, tmp_path
):
    name = f"hostile/faulty-{secrets.token_hex(4)}"
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo one > /one\n")
    ref = f"{proxy.host}/{name}:cache"
    proxy.fault("drop", match="/blobs/uploads/", method="PUT", count=2)
    kiln("build", "--cache-to", f"type=registry,ref={ref},mode=max", ctx,
         root=tmp_path / "a").check()  # fmt: skip
    assert proxy.pending() == 0
    again = kiln("build", "--cache-from", ref, ctx, root=tmp_path / "b").check()
    assert again.ran == [] and len(again.cached) == 1


def test_a_push_whose_uploads_are_refused_publishes_no_tag(
    kiln, busybox_image, api: RegistryAPI, proxy: FaultProxy, tmp_path
):
    name = f"hostile/push-{secrets.token_hex(4)}"
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo {name} > /x\n")
    kiln("build", "-t", f"{proxy.host}/{name}:old", "--push", ctx).check()
    old = api.manifest(name, "old")[1]
    (ctx / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN echo new > /x\n")
    proxy.fault("status", match="/blobs/uploads/", status=400, count=1000)
    run = kiln("build", "-t", f"{proxy.host}/{name}:new", "-t", f"{proxy.host}/{name}:old",
               "--push", ctx)  # fmt: skip
    clean_error(run, f"{proxy.host}/{name}", code=1)
    assert not api.has_manifest(name, "new")
    assert api.manifest(name, "old")[1] == old


@pytest.mark.parametrize("output", ["oci", "local"])
def test_an_output_interrupted_by_a_failed_download_is_not_written(
    kiln, busybox_image, api, proxy: FaultProxy, tmp_path, output: str
):
    """No step reads the base layer, so the output is the first to fetch it — and the
    registry has lost it by then (404). The previous output at dest is left exactly as
    it was, and no temporary file stays beside it."""
    layer = base_layer(api)
    ctx = make_context(tmp_path / "ctx", f"FROM {through(proxy, busybox_image)}\nLABEL a=b\n")
    dest = tmp_path / ("image.tar" if output == "oci" else "rootfs")
    kiln("build", "-o", f"type={output},dest={dest}", ctx, root=tmp_path / "a").check()
    before = tree(tmp_path, with_times=True)
    proxy.fault("status", match=layer, method="GET", status=404, count=1000)
    run = kiln("build", "-o", f"type={output},dest={dest}", ctx, root=tmp_path / "b")
    clean_error(run, layer, code=1)
    after = tree(tmp_path, with_times=True)
    changed = sorted(k for k in after.keys() | before.keys()
                     if before.get(k) != after.get(k) and not k.startswith(("a", "b")))  # fmt: skip
    assert changed == [], "the output (or a temporary file beside it) was touched"


# --- the GitHub Actions cache ------------------------------------------------------------


@dataclass
class GhaBehind:
    """The module's cache server behind a fault proxy, with a scope of this test's own."""

    server: Any
    proxy: FaultProxy
    scope: str = field(default_factory=lambda: f"faults-{secrets.token_hex(4)}")

    def flags(self, timeout: str = "30s") -> str:
        token = self.server.token("refs/heads/main")
        return f"type=gha,url={self.proxy.url},token={token},scope={self.scope},timeout={timeout}"


@pytest.fixture
def gha(gha_server, fault_proxy) -> GhaBehind:
    return GhaBehind(gha_server, fault_proxy(gha_server.url, lifetime=120, max_requests=400))


def test_a_gha_index_download_cut_mid_body_resumes(kiln, busybox_image, gha: GhaBehind,
                                                   tmp_path):  # fmt: skip
    ctx = simple(tmp_path, busybox_image)
    kiln("build", "--cache-to", gha.flags() + ",mode=max", ctx, root=tmp_path / "a").check()
    gha.proxy.fault("cut", method="GET", after=40)  # the first answer of the import
    run = kiln("build", "--cache-from", gha.flags(), ctx, root=tmp_path / "b").check()
    assert run.ran == [] and gha.proxy.pending() == 0
    assert [r.fault for r in gha.proxy.requests if r.fault] == ["cut"]


def test_a_gha_chunk_upload_dropped_is_retried(kiln, busybox_image, gha: GhaBehind, tmp_path):
    ctx = simple(tmp_path, busybox_image)
    gha.proxy.fault("drop", method="PATCH", count=2)
    kiln("build", "--cache-to", gha.flags() + ",mode=max", ctx, root=tmp_path / "a").check()
    assert gha.proxy.pending() == 0
    run = kiln("build", "--cache-from", gha.flags(), ctx, root=tmp_path / "b").check()
    assert run.ran == []


def test_a_gha_export_failing_to_commit_keeps_the_previous_index(
    kiln, busybox_image, gha: GhaBehind, tmp_path
):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY f /f\n", {"f": "1"})
    kiln("build", "--cache-to", gha.flags() + ",mode=max", ctx, root=tmp_path / "a").check()
    (ctx / "f").write_text("2")
    gha.proxy.fault("status", match="/caches/", method="POST", status=500, count=1000)
    run = kiln("build", "--cache-to", gha.flags("3s") + ",mode=max", ctx, root=tmp_path / "b",
               timeout=120)  # fmt: skip
    clean_error(run, gha.proxy.host, code=1)
    assert gha.server.token("refs/heads/main") not in run.stderr
    gha.proxy.clear()
    (ctx / "f").write_text("1")
    again = kiln("build", "--cache-from", gha.flags(), ctx, root=tmp_path / "c").check()
    assert again.ran == []
