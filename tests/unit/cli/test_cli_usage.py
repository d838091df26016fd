"""Usage errors of ``kiln build`` through ``main()``, in-process: no root, runc or registry.

Each is exit code 2 (the ``UsageError`` / ``DockerfileError`` / ``ContextError`` families),
one ``ERROR:`` line naming the flag, attribute or file and saying what to do, and no
traceback. Flag values are checked before the build opens anything: ``KILN_ROOT`` stays
empty.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.fixtures.build import make_context

from kiln.cli.main import main

TWO_STAGES = "FROM scratch AS base\nCOPY f /f\n\nFROM base AS app\nCOPY f /g\n"
UNSET = "KILN_TEST_NEVER_SET"


@dataclass(frozen=True)
class Result:
    code: int | str | None
    out: str
    err: str


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the environment may add to a build: the GitHub Actions runtime (type=gha),
    SOURCE_DATE_EPOCH, the variable the secret cases name."""
    for name in list(os.environ):
        if name.startswith("ACTIONS_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.delenv(UNSET, raising=False)


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return make_context(tmp_path / "ctx", TWO_STAGES, {"f": "f\n"})


@pytest.fixture
def no_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """For errors found by ``run_build`` itself: the OCI runtime must not be opened."""

    def refuse(*_: object) -> None:
        raise AssertionError("the build opened the OCI runtime")

    monkeypatch.setattr("kiln.build.RuncExecutor", refuse)


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Result:
    try:
        code: int | str | None = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors exit 2 as well
        code = exc.code
    out, err = capsys.readouterr()
    return Result(code, out, err)


def assert_usage_error(result: Result, needles: list[str], hint: str | None) -> None:
    assert result.code == 2, result
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert lines and lines[0].startswith("ERROR: "), result.err
    assert [line for line in lines if line.startswith("ERROR")] == [lines[0]], result.err
    for needle in needles:
        assert needle in lines[0], (needle, result.err)
    if hint is not None:
        hints = [line for line in lines if line.startswith("hint: ")]
        assert len(hints) == 1 and hint in hints[0], (hint, result.err)
    assert result.out == ""


# (id, flags, what the ERROR line names, what the hint says)
FLAG_ERRORS = [
    ("output-unknown-type", ["-o", "type=tarball,dest=x"],
     ["--output 'type=tarball,dest=x'", "unknown type 'tarball'"],
     "known types: docker, image, local, oci, registry"),
    ("output-repeated-attribute", ["-o", "type=registry,name=a,name=b"],
     ["--output 'type=registry,name=a,name=b'", "name is given twice"], None),
    ("output-bare-word", ["-o", "type=oci,dest"],
     ["--output 'type=oci,dest'", "'dest' is not key=value"], "write key=value,key=value"),
    ("output-bare-word-after-pairs", ["-o", "type=registry,name=r.example/a,bare"],
     ["--output", "'bare' is not key=value"], "write key=value,key=value"),
    ("output-dest-missing", ["-o", "type=oci"],
     ["--output 'type=oci'", "dest is required for type=oci"], None),
    ("output-unknown-attribute", ["-o", "type=local,dest=x,colour=red"],
     ["--output", "unknown attribute 'colour' for type=local"], "known: dest"),
    ("output-no-name", ["-o", "type=registry"],
     ["--output 'type=registry'", "no image name to push"], "-t NAME or name=NAME"),
    ("output-per-output-compression", ["-o", "type=oci,dest=x,compression-level=3"],
     ["--output", "compression is set for the whole build"], "kiln build --compression"),
    ("output-stdout", ["--output", "-"], ["--output -", "not supported"], "use dest=FILE"),
    ("push-without-tag", ["--push"], ["--push needs at least one -t/--tag"], None),
    ("cache-to-unknown-type", ["--cache-to", "type=s3,bucket=x"],
     ["--cache-to 'type=s3,bucket=x'", "unknown cache type 's3'"],
     "known types: gha, inline, local, registry"),
    ("cache-to-unknown-attribute", ["--cache-to", "type=registry,ref=r.example/a:c,colour=red"],
     ["--cache-to", "unknown attribute 'colour' for type=registry"],
     "known: cache-mount-max-size, cache-mounts, compression"),
    ("cache-from-unknown-attribute", ["--cache-from", "type=local,src=x,dest=y"],
     ["--cache-from", "unknown attribute 'dest' for type=local"], "known: digest, src, tag"),
    ("cache-to-inline-mode-max", ["--cache-to", "type=inline,mode=max"],
     ["--cache-to 'type=inline,mode=max'", "type=inline supports only mode=min"],
     "--cache-to type=registry,ref=<repo:tag>,mode=max"),
    ("cache-to-bad-mode", ["--cache-to", "type=registry,ref=r.example/a:c,mode=middle"],
     ["--cache-to", "mode must be min or max, not 'middle'"], None),
    ("cache-to-ref-missing", ["--cache-to", "type=registry"],
     ["--cache-to 'type=registry'", "ref is required for type=registry"], None),
    ("cache-from-src-missing", ["--cache-from", "type=local"],
     ["--cache-from 'type=local'", "src is required for type=local"], None),
    ("cache-to-bad-max-size", ["--cache-to", "type=local,dest=x,max-size=lots"],
     ["--cache-to", "max-size must be a size like 500MB or 2GB, not 'lots'"], None),
    ("cache-to-manifest-form",
     ["--cache-to", "type=registry,ref=r.example/a:c,image-manifest=true,oci-mediatypes=false"],
     ["--cache-to", "image-manifest=true requires oci-mediatypes=true"], None),
    ("cache-to-gha-without-environment", ["--cache-to", "type=gha"],
     ["--cache-to 'type=gha'", "ACTIONS_CACHE_URL (or url=)", "ACTIONS_RUNTIME_TOKEN (or token=)"],
     "kiln cache serve"),
    ("cache-from-gha-without-environment", ["--cache-from", "type=gha,url=http://127.0.0.1:1/"],
     ["--cache-from", "type=gha needs ACTIONS_RUNTIME_TOKEN (or token=)"], "kiln cache token"),
    ("cache-from-gha-v2-without-environment", ["--cache-from", "type=gha,version=2,token=t"],
     ["--cache-from", "type=gha needs ACTIONS_RESULTS_URL (or url_v2=)"], "url=http://HOST:PORT/"),
    ("cache-to-compression-level-word", ["--cache-to", "type=local,dest=x,compression-level=high"],
     ["--cache-to", "compression-level must be a whole number from 0 to 9, not 'high'"], None),
    ("cache-to-compression-level-range",
     ["--cache-to", "type=local,dest=x,compression=zstd,compression-level=23"],
     ["--cache-to", "compression-level must be a whole number from 0 to 22, not '23'"], None),
    ("secret-without-id", ["--secret", "src={ctx}/f"],
     ["--secret 'src=", "expected id=ID,src=FILE or id=ID,env=VAR"], None),
    ("secret-missing-file", ["--secret", "id=tok,src={tmp}/absent"],
     ["--secret 'id=tok,src=", "/absent is not a file"], None),
    ("secret-unset-env", ["--secret", f"id=tok,env={UNSET}"],
     ["--secret", f"environment variable {UNSET} is not set"], None),
    ("platform-not-linux", ["--platform", "linux/amd64,windows/amd64"],
     ["--platform", "windows/amd64: kiln builds Linux images only"], "--platform linux/amd64"),
    ("platform-unknown-architecture", ["--platform", "linux/sparc"],
     ["--platform", "unknown architecture 'sparc'", "known: amd64, arm64"], None),
    ("platform-docker-output", ["--platform", "linux/amd64,linux/arm64", "--output",
                                "type=docker,dest={tmp}/x.tar"],
     ["--output type=docker", "holds one image"], "--platform linux/amd64"),
    ("platform-malformed", ["--platform", "linux"],
     ["--platform", "invalid platform 'linux': expected os/arch[/variant]"], None),
    ("build-arg-empty-key", ["--build-arg", "=value"],
     ["--build-arg '=value': expected KEY=VALUE"], None),
    ("label-empty-key", ["--label", "=value"], ["--label '=value': expected KEY=VALUE"], None),
    ("tag-invalid-pushed", ["-t", "Bad:Name:x", "--push"],
     ["invalid image reference 'Bad:Name:x'"], "expected [registry/]repository[:tag]"),
    ("output-name-invalid", ["-o", "type=registry,name=example.com/Bad:1"],
     ["invalid image reference 'example.com/Bad:1'"], "expected [registry/]repository[:tag]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "needles", "hint"),
    [case[1:] for case in FLAG_ERRORS],
    ids=[case[0] for case in FLAG_ERRORS],
)
def test_bad_flag_values_fail_before_the_build(
    capsys: pytest.CaptureFixture[str],
    ctx: Path,
    tmp_path: Path,
    kiln_root: Path,
    flags: list[str],
    needles: list[str],
    hint: str | None,
) -> None:
    args = [f.format(ctx=ctx, tmp=tmp_path) for f in flags]
    assert_usage_error(run(capsys, "build", *args, ctx), needles, hint)
    assert list(kiln_root.iterdir()) == []  # rejected before anything ran


def test_gha_with_empty_runner_variables(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ctx: Path,
    kiln_root: Path,
) -> None:
    """Set but empty (as a runner without the cache service exposes them) is missing."""
    for name in ("ACTIONS_CACHE_URL", "ACTIONS_RESULTS_URL", "ACTIONS_RUNTIME_TOKEN",
                 "ACTIONS_CACHE_SERVICE_V2"):  # fmt: skip
        monkeypatch.setenv(name, "")
    assert_usage_error(
        run(capsys, "build", "--cache-to", "type=gha", ctx),
        ["type=gha needs ACTIONS_CACHE_URL (or url=) and ACTIONS_RUNTIME_TOKEN (or token=)"],
        "kiln cache serve",
    )
    assert list(kiln_root.iterdir()) == []


@pytest.mark.parametrize("epoch", ["yesterday", "-1", "1.5", " 17"])
def test_bad_source_date_epoch(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ctx: Path,
    kiln_root: Path,
    epoch: str,
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    result = run(capsys, "build", ctx)
    assert_usage_error(result, [f"SOURCE_DATE_EPOCH={epoch!r}", "whole number of seconds"], None)
    assert list(kiln_root.iterdir()) == []


@pytest.mark.usefixtures("no_runtime")
def test_missing_build_context(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert_usage_error(
        run(capsys, "build", missing),
        [f"build context {missing} is not a directory"],
        "pass the directory that holds your sources",
    )


@pytest.mark.usefixtures("no_runtime")
def test_missing_dockerfile(
    capsys: pytest.CaptureFixture[str], ctx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ctx.parent)  # -f is relative to the working directory, as docker's
    assert_usage_error(
        run(capsys, "build", "-f", "nope", ctx),
        [f"{ctx.parent / 'nope'}: Dockerfile not found"],
        "pass the right file with -f FILE",
    )


@pytest.mark.usefixtures("no_runtime")
def test_unknown_target(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # found while planning, before any base image is resolved or any step runs: needs
    # neither root nor runc nor a registry (the base's registry does not even exist)
    base = "127.0.0.1:1/never/pulled:latest"
    ctx = make_context(tmp_path / "ctx", TWO_STAGES.replace("scratch", base, 1), {"f": "f\n"})
    assert_usage_error(
        run(capsys, "build", "--target", "nope", ctx),
        ["--target nope", "no such stage", str(ctx / "Dockerfile")],
        "stages: base, app",
    )


def test_argparse_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], ctx: Path) -> None:
    result = run(capsys, "build", "--progress", "loud", ctx)
    assert result.code == 2
    assert "argument --progress: invalid choice: 'loud'" in result.err
    assert "Traceback" not in result.err


def test_invalid_tag_is_refused_without_push(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ctx = make_context(tmp_path / "ctx", "FROM scratch\n")
    result = run(capsys, "build", "-t", "Bad Name!", ctx)
    assert_usage_error(result, ["Bad Name!", "invalid image reference"], None)


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["-t", "Bad:Name:x", "--push"], re.compile(r"(^|\s)(-t|--tag)\b")),
        (["-o", "type=registry,name=example.com/Bad:1"], re.compile(r"--output\b")),
    ],
)
def test_invalid_image_names_name_their_flag(
    capsys: pytest.CaptureFixture[str], ctx: Path, flags: list[str], flag: re.Pattern[str]
) -> None:
    result = run(capsys, "build", *flags, ctx)
    assert result.code == 2
    assert flag.search(result.err.splitlines()[0]), result.err


SECRET = "SECRET123"


@pytest.mark.parametrize(
    "flags",
    [
        ["--cache-to", f"type=gha,token={SECRET},url=http://127.0.0.1:1/,colour=red"],
        ["--cache-to", f"type=gha,url=http://127.0.0.1:1/,token={SECRET},mode=huge"],
        ["--cache-from", f"type=gha,token={SECRET},url=http://127.0.0.1:1/,bare"],
        ["--cache-from", f"type=gha,ghtoken={SECRET},timeout=soon"],
    ],
    ids=["unknown-attribute", "bad-value", "bare-word", "ghtoken"],
)
def test_credentials_in_a_flag_are_not_echoed(
    capsys: pytest.CaptureFixture[str], ctx: Path, flags: list[str]
) -> None:
    result = run(capsys, "build", *flags, ctx)
    assert result.code == 2 and "Traceback" not in result.err
    assert SECRET not in result.err + result.out
