"""End-to-end builds: real runc, real overlayfs, a real registry, independent consumers."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.fixtures.build import make_context
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.integration


def skopeo_raw(*args: str) -> bytes:
    return subprocess.run(["skopeo", *args], capture_output=True, check=True).stdout


def skopeo(*args: str) -> dict:
    return json.loads(skopeo_raw(*args))


def test_build_push_and_inspect(kiln, busybox_image, registry: RegistryServer, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image}
ENV GREETING="hello world" PATHX=/opt
WORKDIR /app
COPY greeting.txt ./
RUN echo "$GREETING from $(pwd)" > built.txt && cat greeting.txt >> built.txt
LABEL com.example.kind=test
EXPOSE 8080 53/udp
VOLUME /data
USER 1000:1000
HEALTHCHECK --interval=5s --retries=3 CMD cat /app/built.txt
STOPSIGNAL SIGINT
ENTRYPOINT ["cat"]
CMD ["/app/built.txt"]
""",
        {"greeting.txt": "greetings\n"},
    )
    ref = f"{registry.host}/test/basic:v1"
    run = kiln("build", "-t", ref, "--push", "--label", "extra=yes", ctx).check()
    raw_manifest = skopeo_raw("inspect", "--tls-verify=false", "--raw", f"docker://{ref}")
    digest = "sha256:" + hashlib.sha256(raw_manifest).hexdigest()
    assert run.metadata["containerimage.digest"] == digest  # what the registry serves
    assert run.metadata["pushed"] == [f"{ref}@{digest}"]
    assert [s["cached"] for s in run.metadata["steps"]] == [False, False, False]
    assert run.metadata["steps"][2]["step"].startswith("build 4/4 RUN echo")

    config = skopeo("inspect", "--tls-verify=false", "--config", "--raw", f"docker://{ref}")[
        "config"
    ]
    assert "GREETING=hello world" in config["Env"]
    assert config["WorkingDir"] == "/app"
    assert config["User"] == "1000:1000"
    assert config["Labels"] == {"com.example.kind": "test", "extra": "yes"}
    assert set(config["ExposedPorts"]) == {"8080/tcp", "53/udp"}
    assert set(config["Volumes"]) == {"/data"}
    assert config["Entrypoint"] == ["cat"]
    assert config["Cmd"] == ["/app/built.txt"]
    assert config["StopSignal"] == "SIGINT"
    assert config["Healthcheck"]["Test"] == ["CMD-SHELL", "cat /app/built.txt"]
    assert config["Healthcheck"]["Interval"] == 5_000_000_000
    manifest = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{ref}")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["digest"] == run.metadata["containerimage.config.digest"]

    bundle = tmp_path / "bundle"
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path}/oci:v1"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["umoci", "unpack", "--image", f"{tmp_path}/oci:v1", str(bundle)],
        check=True,
        capture_output=True,
    )
    built = (bundle / "rootfs" / "app" / "built.txt").read_text()
    assert built == "hello world from /app\ngreetings\n"
    # the image runs under runc and prints what its Dockerfile says
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    (bundle / "config.json").write_text(json.dumps(spec))
    out = subprocess.run(
        ["runc", "run", "--bundle", str(bundle), f"kiln-test-{tmp_path.name}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == built


def test_unchanged_rebuild_runs_nothing_and_a_change_reruns_only_dependents(
    kiln, busybox_image, tmp_path: Path
):
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image}
COPY a.txt /a.txt
RUN cat /a.txt > /a.copy
COPY b.txt /b.txt
RUN cat /a.copy /b.txt > /both
""",
        {"a.txt": "A\n", "b.txt": "B\n"},
    )
    first = kiln("build", ctx).check()
    assert len(first.ran) == 4
    second = kiln("build", ctx).check()
    assert second.ran == []
    assert second.metadata["containerimage.digest"] == first.metadata["containerimage.digest"]
    # mtime alone changes nothing
    (ctx / "a.txt").touch()
    assert kiln("build", ctx).check().ran == []
    (ctx / "b.txt").write_text("B2\n")
    third = kiln("build", "-o", f"type=local,dest={tmp_path / 'out'}", ctx).check()
    assert third.ran == ["build 4/5 COPY b.txt /b.txt", "build 5/5 RUN cat /a.copy /b.txt > /both"]
    assert (tmp_path / "out" / "both").read_text() == "A\nB2\n"
    # --no-cache runs everything again
    assert len(kiln("build", "--no-cache", ctx).check().ran) == 4


def test_corrupt_cache_entries_are_misses(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo one > /one\n")
    root = tmp_path / "root"
    kiln("build", ctx, root=root).check()
    entries = list((root / "cache" / "keys").glob("*.json"))
    assert len(entries) == 1  # the one RUN step's
    for entry in entries:
        entry.write_text('{"layer": {"digest": "sha256:tr')  # half-written
    again = kiln("build", "-o", f"type=local,dest={tmp_path / 'out'}", ctx, root=root).check()
    assert again.ran == ["build 2/2 RUN echo one > /one"]
    assert (tmp_path / "out" / "one").read_text() == "one\n"


def test_outputs_oci_docker_and_local(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx", f'FROM {busybox_image}\nRUN echo payload > /payload\nCMD ["true"]\n'
    )
    oci_tar, docker_tar, local = (
        tmp_path / "img.oci.tar",
        tmp_path / "img.docker.tar",
        tmp_path / "fs",
    )
    run = kiln(
        "build",
        "-t",
        "example.com/out:1",
        "-o",
        f"type=oci,dest={oci_tar}",
        "-o",
        f"type=docker,dest={docker_tar}",
        "-o",
        f"type=local,dest={local}",
        ctx,
    ).check()
    base_layers = skopeo("inspect", "--tls-verify=false", f"docker://{busybox_image}")["Layers"]
    oci = skopeo("inspect", f"oci-archive:{oci_tar}")
    assert oci["Digest"] == run.metadata["containerimage.digest"]  # the OCI form is the default
    docker = skopeo("inspect", f"docker-archive:{docker_tar}")
    # the base's layers and the RUN's, in both archives (a docker archive's are uncompressed:
    # named by their diff IDs)
    assert len(oci["Layers"]) == len(base_layers) + 1
    diff_ids = skopeo("inspect", "--config", f"oci-archive:{oci_tar}")["rootfs"]["diff_ids"]
    assert docker["Layers"] == diff_ids and len(diff_ids) == len(oci["Layers"])
    assert (local / "payload").read_text() == "payload\n"
    assert (local / "bin" / "busybox").is_file()


def test_target_and_unneeded_stages(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image} AS broken
RUN exit 3

FROM {busybox_image} AS base
RUN echo base > /base

FROM base AS app
RUN echo app > /app

FROM {busybox_image} AS other
COPY --from=app /app /from-app
RUN cat /from-app
""",
    )
    # the last stage does not need "broken": it is never built
    run = kiln("build", "-o", f"type=local,dest={tmp_path / 'a'}", ctx).check()
    assert not any(s.startswith("broken") for s in run.ran)
    assert (tmp_path / "a" / "from-app").read_text() == "app\n"
    run = kiln("build", "--target", "app", "-o", f"type=local,dest={tmp_path / 'b'}", ctx).check()
    assert (tmp_path / "b" / "base").read_text() == "base\n"
    assert not (tmp_path / "b" / "from-app").exists()
    bad = kiln("build", "--target", "nope", ctx)
    assert bad.returncode == 2
    assert "--target nope" in bad.stderr and "Traceback" not in bad.stderr


def test_independent_stages_build_in_parallel(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image} AS one
RUN sleep 2 && echo 1 > /one

FROM {busybox_image} AS two
RUN sleep 2 && echo 2 > /two

FROM {busybox_image}
COPY --from=one /one /one
COPY --from=two /two /two
""",
    )
    root = tmp_path / "root"
    run = kiln("build", "--progress", "rawjson", ctx, root=root).check()
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    spans: dict[str, list[float]] = {}
    for event in events:
        if event.get("event") in ("started", "done") and "sleep" in event.get("step", ""):
            spans.setdefault(event["step"], []).append(event["time"])
    assert len(spans) == 2
    (s1, e1), (s2, e2) = spans.values()
    assert s1 < e2 and s2 < e1, "the two independent stages did not overlap"


@pytest.mark.skipif(not shutil.which("umoci"), reason="umoci not installed")
def test_onbuild_triggers_run_in_the_child(kiln, busybox_image, registry, tmp_path: Path):
    parent = make_context(
        tmp_path / "parent",
        f"FROM {busybox_image}\nONBUILD RUN echo triggered > /onbuild\nONBUILD COPY x.txt /x.txt\n",
    )
    ref = f"{registry.host}/test/onbuild:1"
    kiln("build", "-t", ref, "--push", parent).check()
    config = skopeo("inspect", "--tls-verify=false", "--config", "--raw", f"docker://{ref}")[
        "config"
    ]
    assert config["OnBuild"] == ["RUN echo triggered > /onbuild", "COPY x.txt /x.txt"]
    child = make_context(tmp_path / "child", f"FROM {ref}\n", {"x.txt": "from child\n"})
    out = tmp_path / "out"
    kiln("build", "-o", f"type=local,dest={out}", child).check()
    assert (out / "onbuild").read_text() == "triggered\n"
    assert (out / "x.txt").read_text() == "from child\n"
