"""Hostile Dockerfiles and flags: one clear error before anything runs (or a correct build),
never a traceback, a file written outside the build's paths or a half-written output."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from tests.fixtures.build import make_context
from tests.fixtures.hostile import Canary, clean_error, tree

pytestmark = pytest.mark.integration


def nothing_ran(root: Path) -> None:
    """No step of the build ran or was committed: the step cache under *root* is empty."""
    keys = root / "cache" / "keys"
    assert not keys.exists() or not any(keys.iterdir()), list(keys.iterdir())


def leftovers(folder: Path, name: str) -> list[str]:
    """Temporary files an atomic write of *name* in *folder* would leave if it were not
    cleaned up (``.name.*``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


# --- the Dockerfile itself ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("RUN <<EOF\necho never ends\n", "unterminated heredoc"),
        ("RUN echo ok > /ok\nFROOB --x y\n", "unknown instruction: FROOB"),
        ("RUN echo ok > /ok\nWORKDIR ${NOPE:?must be set}\n", "NOPE: must be set"),
    ],
    ids=["unterminated-heredoc", "unknown-instruction", "required-var"],
)  # fmt: skip
def test_a_bad_line_is_refused_before_any_step_runs(
    kiln, busybox_image, kiln_root: Path, tmp_path: Path, text: str, needle: str
):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\n{text}")
    run = kiln("build", ctx)
    clean_error(run, "Dockerfile", needle, code=2)
    nothing_ran(kiln_root)  # the RUN before the bad line never ran


def test_a_line_longer_than_the_parser_allows_is_one_error(kiln, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", "FROM scratch\nRUN echo " + "x" * 70_000 + "\n")
    clean_error(kiln("build", ctx), str(ctx / "Dockerfile"), "max allowed size", code=2)


def test_a_nul_byte_is_refused_not_truncated(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"FROM {busybox_image}\nRUN echo a\x00 > /x\nRUN echo second > /second\n",
    )
    out = tmp_path / "out"
    run = kiln("build", "-o", f"type=local,dest={out}", ctx)
    # what a build of this file must never be: one RUN `echo a` and nothing else
    assert not (run.returncode == 0 and not (out / "second").exists()), run.stderr
    clean_error(run, code=(1, 2))  # refused (BuildKit: exec fails on the NUL), not dropped


def test_invalid_utf8_is_one_error_naming_the_file(kiln, tmp_path: Path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_bytes(b"FROM scratch\nLABEL x=\xff\xfe\n")
    clean_error(kiln("build", ctx), str(ctx / "Dockerfile"), "utf-8", code=2)


def test_an_absurd_arg_expansion_fails_the_step_cleanly(
    kiln, busybox_image, kiln_root: Path, tmp_path: Path
):
    """ARG values that multiply to 10 MB (each ARG ten times the one before): the step
    cannot get such an environment; one error naming the step, nothing cached."""
    lines = [f"FROM {busybox_image}", "ARG A=" + "x" * 1000]
    for prev, name in zip("ABCD", "BCDE", strict=True):
        lines.append(f"ARG {name}=" + f"${{{prev}}}" * 10)
    lines.append("RUN echo ok > /ok")
    ctx = make_context(tmp_path / "ctx", "\n".join(lines) + "\n")
    run = kiln("build", ctx, timeout=120)
    clean_error(run, "RUN echo ok", "argument list too long", code=1)
    nothing_ran(kiln_root)


def test_an_arg_that_makes_a_bad_base_reference_is_one_error(kiln, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", "ARG X\nFROM ${X}\nRUN touch /evil\n")
    run = kiln("build", "--build-arg", "X=busybox\nRUN touch /evil", ctx)
    clean_error(run, "Dockerfile:2", "invalid image reference", code=2)


# --- COPY sources and owners -----------------------------------------------------------


@pytest.mark.parametrize(
    "instruction",
    ["COPY sub/../../outside /x", "ADD ok ./../outside /x/"],
)  # fmt: skip
def test_copy_sources_cannot_climb_out_of_the_context(
    kiln, busybox_image, kiln_root: Path, tmp_path: Path, instruction: str
):
    (tmp_path / "outside").write_text("outside the context\n")
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\n{instruction}\n",
                       {"sub/x": "x", "ok": "ok"})  # fmt: skip
    clean_error(kiln("build", ctx), "outside the build context", code=2)
    nothing_ran(kiln_root)


def test_chown_to_an_id_beyond_uid_t_is_a_dockerfile_error(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY --chown=99999999999 f /f\n",
                       {"f": "f"})  # fmt: skip
    clean_error(kiln("build", ctx), "99999999999", code=(1, 2))


def test_chown_to_an_unknown_name_is_one_error(
    kiln, busybox_image, kiln_root: Path, tmp_path: Path
):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY --chown=nosuchuser f /f\n",
                       {"f": "f"})  # fmt: skip
    clean_error(kiln("build", ctx), "COPY --chown=nosuchuser f /f",
                "unable to find user nosuchuser", code=1)  # fmt: skip
    nothing_ran(kiln_root)


def test_chown_to_a_large_valid_id_is_kept_exactly(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\n"
                       "COPY --chown=2147483648:4000000000 f /f\n", {"f": "f"})  # fmt: skip
    image = tmp_path / "image.tar"
    kiln("build", "-o", f"type=oci,dest={image}", ctx).check()
    with tarfile.open(image) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"))  # type: ignore[arg-type]
        top = tar.extractfile(f"blobs/sha256/{manifest['layers'][-1]['digest'][7:]}")
        with tarfile.open(fileobj=top, mode="r:gz") as layer:
            f = layer.getmember("f")
    assert (f.uid, f.gid) == (2147483648, 4000000000)


# --- RUN --mount -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mount", "needle"),
    [
        ("type=bind,target=/x,bogus=1", "unknown attribute 'bogus'"),
        ("type=cache,target=/x,sharing=weird", "sharing must be"),
        ("type=ssh", "unsupported mount type 'ssh'"),
        ("type=bind,target=/x,readonly=maybe", "readonly"),
    ],
    ids=["unknown", "sharing", "ssh", "bool"],
)
def test_a_bad_mount_option_is_one_error_naming_the_line(
    kiln, busybox_image, kiln_root: Path, tmp_path: Path, mount: str, needle: str
):
    dockerfile = f"FROM {busybox_image}\nRUN echo ok > /ok\nRUN --mount={mount} true\n"
    ctx = make_context(tmp_path / "ctx", dockerfile)
    clean_error(kiln("build", ctx), "Dockerfile:3", f"--mount={mount}", needle, code=2)
    nothing_ran(kiln_root)


def test_a_bind_source_outside_the_context_names_the_mount(kiln, busybox_image, tmp_path: Path):
    mount = "--mount=type=bind,source=../..,target=/x"
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN {mount} ls /x\n")
    clean_error(kiln("build", ctx), "Dockerfile:2", "--mount", "outside the build context",
                code=2)  # fmt: skip


def test_a_cache_id_with_dot_dots_stays_under_kiln_root(
    kiln, busybox_image, kiln_root: Path, canary: Canary, tmp_path: Path
):
    mount_id = "../" * 12 + canary.rel
    ctx = make_context(
        tmp_path / "ctx",
        f"FROM {busybox_image}\nRUN --mount=type=cache,target=/c,id={mount_id} "
        "echo pwned > /c/pwned && ls /c > /seen\n",
    )
    out = tmp_path / "out"
    kiln("build", "-o", f"type=local,dest={out}", ctx).check()
    assert (out / "seen").read_text() == "pwned\n"  # a fresh, empty cache directory
    canary.check()
    found = list((kiln_root / "cache" / "mounts").glob("*/pwned"))
    assert len(found) == 1, "the cache directory is not under KILN_ROOT/cache/mounts"


# --- flags -----------------------------------------------------------------------------


def test_build_arg_and_label_values_with_newlines_are_values_not_instructions(
    kiln, busybox_image, tmp_path: Path
):
    value = "a\nRUN touch /evil\n\tb"
    dockerfile = f'FROM {busybox_image}\nARG X\nRUN printf %s "$X" > /x\nLABEL fromarg=$X\n'
    ctx = make_context(tmp_path / "ctx", dockerfile)
    out, image = tmp_path / "out", tmp_path / "image.tar"
    kiln("build", "--build-arg", f"X={value}", "--label", "k=v\nLABEL evil=1",
         "-o", f"type=local,dest={out}", "-o", f"type=oci,dest={image}", ctx).check()  # fmt: skip
    assert (out / "x").read_text() == value
    assert not (out / "evil").exists()
    with tarfile.open(image) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(f"blobs/sha256/{manifest['config']['digest'][7:]}"))  # type: ignore[arg-type]
    labels = config["config"]["Labels"]
    assert labels["k"] == "v\nLABEL evil=1" and "evil" not in labels
    assert labels["fromarg"] == value


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_dockerfile_flag_pointing_at_no_regular_file(kiln, kiln_root: Path, tmp_path: Path,
                                                    kind: str):  # fmt: skip
    ctx = make_context(tmp_path / "ctx", "FROM scratch\n")
    target = tmp_path / "df"
    if kind == "directory":
        target.mkdir()
    else:
        os.mkfifo(target)  # opening it for reading would block forever
    run = kiln("build", "-f", target, ctx, timeout=60)
    clean_error(run, str(target), "-f FILE", code=2)
    nothing_ran(kiln_root)


def test_output_into_the_context_touches_nothing_else_there(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY . /src\n",
                       {"a": "a", "sub/b": "b"})  # fmt: skip
    before = tree(ctx, with_times=True)
    kiln("build", "-o", f"type=local,dest={ctx / 'out'}", ctx).check()
    after = tree(ctx, with_times=True)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before
    assert (ctx / "out" / "src" / "sub" / "b").read_text() == "b"
    assert not (ctx / "out" / "src" / "out").exists()  # the output is not in its own input


def test_output_never_writes_through_a_symlink_already_in_dest(
    kiln, busybox_image, canary: Canary, tmp_path: Path
):
    """A destination holding ``etc -> <canary>`` (say, left by an earlier hostile image):
    writing the image's /etc must not land in the canary."""
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo x > /etc/written\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "etc").symlink_to(canary.path)
    run = kiln("build", "-o", f"type=local,dest={out}", ctx)
    canary.check()
    if run.returncode == 0:  # replaced the link with the image's directory
        assert not (out / "etc").is_symlink() and (out / "etc" / "written").is_file()
    else:
        clean_error(run, str(out), code=1)


@pytest.mark.parametrize("where", ["a-directory", "in-proc"])
def test_an_unwritable_metadata_file_is_one_error_and_no_leftover(
    kiln, busybox_image, tmp_path: Path, where: str
):
    """A directory in the way (the temporary file is written beside it, then cannot
    replace it) or a place nothing can be created in."""
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo x > /x\n")
    (tmp_path / "meta").mkdir()
    target = tmp_path / "meta" if where == "a-directory" else Path("/proc/kiln-meta.json")
    run = kiln("build", "--metadata-file", target, ctx)
    clean_error(run, "--metadata-file", str(target), code=1)
    assert list((tmp_path / "meta").iterdir()) == []
    assert leftovers(tmp_path, "meta") == [], "a half-written metadata file was left"


def test_an_archive_output_onto_a_directory_is_one_error_and_no_leftover(
    kiln, busybox_image, tmp_path: Path
):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo x > /x\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("keep")
    run = kiln("build", "-o", f"type=oci,dest={dest}", ctx)
    clean_error(run, str(dest), code=1)
    assert [p.name for p in dest.iterdir()] == ["keep"]
    assert [p.name for p in tmp_path.iterdir() if "kiln-tmp" in p.name] == []


def test_a_secret_source_that_is_a_fifo_is_a_usage_error_not_a_hang(kiln, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", "FROM scratch\n")
    src = tmp_path / "secret"
    os.mkfifo(src)
    run = kiln("build", "--secret", f"id=s,src={src}", ctx, timeout=60)
    clean_error(run, "--secret", "is not a file", code=2)


def test_an_env_secret_that_is_not_set_is_a_usage_error(kiln, tmp_path: Path):
    assert "KILN_HOSTILE_UNSET" not in os.environ
    ctx = make_context(tmp_path / "ctx", "FROM scratch\n")
    run = kiln("build", "--secret", "id=s,env=KILN_HOSTILE_UNSET", ctx)
    clean_error(run, "KILN_HOSTILE_UNSET", "is not set", code=2)
