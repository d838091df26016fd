"""Secrets stay secret: ``--secret`` values, registry passwords and gha tokens never appear
in layers, image config or history, the metadata file, kiln's state, progress output or
errors — ``--debug`` included."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from tests.fixtures.build import make_context
from tests.fixtures.gha import token_for
from tests.fixtures.hostile import clean_error
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.integration


def forms(value: str) -> list[bytes]:
    """How a secret could leak: itself, base64 of it, its SHA-256 (a cache key made of it
    could be brute-forced)."""
    raw = value.encode()
    return [raw, base64.b64encode(raw), hashlib.sha256(raw).hexdigest().encode()]


def _readable(data: bytes) -> list[bytes]:
    out = [data]
    if data[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError, zlib.error):
            out.append(gzip.decompress(data))
    return out


def _stored(path: Path) -> list[bytes]:
    """What a file holds: its bytes, gzip blobs decompressed, archives member by member."""
    out = _readable(path.read_bytes())
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.isfile():
                    out += _readable(tar.extractfile(m).read())  # type: ignore[union-attr]
    return out


def assert_nowhere(needles: list[bytes], texts: list[str], trees: list[Path]) -> None:
    """None of *needles* in any of *texts* nor in any file below *trees*."""
    for text in texts:
        for needle in needles:
            assert needle.decode() not in text, f"a secret appears in the output:\n{text}"
    scanned = 0
    for top in trees:
        for path in [top] if top.is_file() else top.rglob("*"):
            if path.is_file() and not path.is_symlink():
                scanned += 1
                for blob in _stored(path):
                    for needle in needles:
                        assert needle not in blob, f"a secret is stored in {path}"
    assert scanned or not trees, "nothing was scanned"


def image_config(image: Path) -> dict:
    with tarfile.open(image) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"))  # type: ignore[arg-type]
        return json.load(tar.extractfile(f"blobs/sha256/{manifest['config']['digest'][7:]}"))  # type: ignore[arg-type,no-any-return]


# --- --secret ----------------------------------------------------------------------------

USES_SECRETS = """\
RUN --mount=type=secret,id=f --mount=type=secret,id=e,env=TOKEN \\
    test "${#TOKEN}" -gt 20 && test "$(cat /run/secrets/f)" = "$TOKEN" && echo ok > /ok
"""


def secret_flags(tmp_path: Path, value: str) -> tuple[list[str], dict[str, str]]:
    """The same value as a file secret ``f`` and an environment secret ``e``."""
    src = tmp_path / "secret.txt"
    src.write_text(value)
    return ["--secret", f"id=f,src={src}", "--secret", "id=e,env=KILN_TEST_SECRET"], {
        "KILN_TEST_SECRET": value
    }


def test_secrets_used_by_a_step_appear_in_no_layer_config_metadata_state_or_output(
    kiln, busybox_image, kiln_root: Path, tmp_path: Path
):
    value = f"s3cret-{secrets.token_hex(16)}"
    flags, env = secret_flags(tmp_path, value)
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\n{USES_SECRETS}")
    image, meta, out = tmp_path / "image.tar", tmp_path / "meta.json", tmp_path / "out"
    run = kiln("--debug", "build", *flags, "-o", f"type=oci,dest={image}",
               "-o", f"type=local,dest={out}", "--metadata-file", meta, "--progress", "plain",
               ctx, env=env).check()  # fmt: skip
    assert (out / "ok").read_text() == "ok\n"  # the step got the secret, as file and env
    assert not (out / "run" / "secrets" / "f").exists()
    assert all("KILN_TEST_SECRET" not in e and "TOKEN" not in e
               for e in image_config(image)["config"].get("Env", []))  # fmt: skip
    assert_nowhere(forms(value), [run.stdout, run.stderr], [image, meta, kiln_root, out])
    with pytest.raises(AssertionError, match="a secret is stored"):  # the scan does find it
        assert_nowhere(forms(value), [], [tmp_path / "secret.txt"])


@pytest.mark.parametrize("fails", ["the-step", "a-later-step"])
def test_secrets_appear_in_no_error_even_with_debug(
    kiln, busybox_image, kiln_root: Path, tmp_path: Path, fails: str
):
    value = f"s3cret-{secrets.token_hex(16)}"
    flags, env = secret_flags(tmp_path, value)
    failing = (USES_SECRETS.replace("echo ok > /ok", "echo about to fail && exit 3")
               if fails == "the-step" else USES_SECRETS + "RUN exit 4\n")  # fmt: skip
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\n{failing}")
    run = kiln("--debug", "build", *flags, "--progress", "plain", ctx, env=env)
    clean_error(run, "exit code: 3" if fails == "the-step" else "exit code: 4", code=1,
                debug=True)  # fmt: skip
    assert_nowhere(forms(value), [run.stdout, run.stderr], [kiln_root])


@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGINT,
        signal.SIGTERM,
    ],
    ids=["SIGINT", "SIGTERM"],
)  # fmt: skip
def test_an_interrupted_build_leaves_no_copy_of_an_env_secret(
    busybox_image, kiln_root: Path, tmp_path: Path, need_root, signum: int
):
    value = f"s3cret-{secrets.token_hex(16)}"
    scratch = tmp_path / "tmpdir"  # kiln's $TMPDIR: where a copy would stay
    scratch.mkdir()
    step = "RUN --mount=type=secret,id=e,env=T sleep 2"
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\n{step}\n")
    env = {**os.environ, "KILN_ROOT": str(kiln_root), "TMPDIR": str(scratch),
           "KILN_TEST_SECRET": value}  # fmt: skip
    argv = [sys.executable, "-m", "kiln.cli.main", "build", "--progress", "plain",
            "--secret", "id=e,env=KILN_TEST_SECRET", str(ctx)]  # fmt: skip
    with subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "RUN --mount" in line:  # the step runs: the secret is in use
                proc.send_signal(signum)
                break
        output = proc.stderr.read()
        proc.wait(timeout=60)
    assert proc.returncode != 0
    sweep = make_context(tmp_path / "sweep", "FROM scratch\n")  # unmounts what was left
    subprocess.run([sys.executable, "-m", "kiln.cli.main", "build", str(sweep)], env=env,
                   capture_output=True, timeout=60)  # fmt: skip
    assert str(kiln_root) not in Path("/proc/mounts").read_text()
    assert value not in output
    assert_nowhere(forms(value), [], [scratch, kiln_root])


# --- registry passwords ------------------------------------------------------------------


def docker_login(registry: RegistryServer, password: str) -> None:
    """A Docker config.json login for *registry* (in the test's own DOCKER_CONFIG)."""
    auth = base64.b64encode(f"{registry.username}:{password}".encode()).decode()
    config = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    config.write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))


def password_forms(registry: RegistryServer, password: str) -> list[bytes]:
    return [*forms(password), base64.b64encode(f"{registry.username}:{password}".encode())]


def test_a_registry_password_appears_in_no_output_or_state(
    kiln, busybox_image, auth_registry: RegistryServer, kiln_root: Path, tmp_path: Path
):
    assert auth_registry.password
    docker_login(auth_registry, auth_registry.password)
    name = f"{auth_registry.host}/hostile/secret-{secrets.token_hex(4)}"
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo private > /p\n")
    meta = tmp_path / "meta.json"
    cache_to = f"type=registry,ref={name}:cache,mode=max"
    run = kiln("--debug", "build", "-t", f"{name}:1", "--push", "--cache-to", cache_to,
               "--metadata-file", meta, ctx).check()  # fmt: skip
    (pushed,) = json.loads(meta.read_text())["pushed"]
    assert pushed.startswith(f"{name}:1@sha256:")
    again = kiln("--debug", "build", "--cache-from", f"{name}:cache", ctx,
                 root=tmp_path / "fresh").check()  # fmt: skip
    assert again.ran == []
    assert_nowhere(password_forms(auth_registry, auth_registry.password),
                   [run.stdout, run.stderr, again.stdout, again.stderr],
                   [kiln_root, meta, tmp_path / "fresh"])  # fmt: skip


def test_a_wrong_registry_password_is_refused_without_being_echoed(
    kiln, busybox_image, auth_registry: RegistryServer, kiln_root: Path, tmp_path: Path
):
    wrong = f"wrong-{secrets.token_hex(12)}"
    docker_login(auth_registry, wrong)
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN true\n")
    run = kiln("--debug", "build", "-t", f"{auth_registry.host}/hostile/denied:1", "--push", ctx)
    clean_error(run, auth_registry.host, code=1, debug=True)
    login = subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", "--debug", "login", auth_registry.host, "-u",
         str(auth_registry.username), "--password-stdin"],
        input=wrong, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert login.returncode == 1 and login.stderr.count("ERROR:") == 1, login.stderr
    assert_nowhere(password_forms(auth_registry, wrong),
                   [run.stdout, run.stderr, login.stdout, login.stderr], [kiln_root])  # fmt: skip


# --- gha tokens ----------------------------------------------------------------------------


def token_forms(token: str) -> list[bytes]:
    """The token and its signature (the part that must never be shown, even alone)."""
    return [*forms(token), token.rsplit(".", 1)[-1].encode()]


def test_a_gha_token_appears_in_no_output_or_state(
    kiln, busybox_image, gha_server_factory, kiln_root: Path, tmp_path: Path
):
    server = gha_server_factory()
    token = server.token("refs/heads/main")
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo gha > /g\n")
    meta = tmp_path / "meta.json"
    attr = f"type=gha,url={server.url},token={token},scope=secrets"
    run = kiln("--debug", "build", "--cache-to", attr + ",mode=max", "--metadata-file", meta,
               ctx).check()  # fmt: skip
    # the same token from the runner's environment, for the import
    env = {"ACTIONS_RUNTIME_TOKEN": token, "ACTIONS_CACHE_URL": server.url}
    again = kiln("--debug", "build", "--cache-from", "type=gha,scope=secrets", ctx,
                 root=tmp_path / "fresh", env=env).check()  # fmt: skip
    assert again.ran == []
    assert_nowhere(token_forms(token), [run.stdout, run.stderr, again.stdout, again.stderr],
                   [kiln_root, meta, tmp_path / "fresh"])  # fmt: skip


@pytest.mark.parametrize("failure", ["refused-token", "server-down", "bad-flag"])
def test_a_gha_token_appears_in_no_error(
    kiln, busybox_image, gha_server_factory, tmp_path: Path, failure: str
):
    server = gha_server_factory()
    token = server.token("refs/heads/main")
    if failure == "refused-token":  # signed with another secret: the server says 401
        token = token_for("refs/heads/main", secret=b"not-the-server-secret-0123456789ab")
    elif failure == "server-down":
        server.stop()
    extra = ",bogus=1" if failure == "bad-flag" else ""
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN true\n")
    run = kiln("--debug", "build", "--cache-to",
               f"type=gha,url={server.url},token={token},timeout=3s,mode=max{extra}", ctx,
               timeout=120)  # fmt: skip
    message = clean_error(run, code=2 if failure == "bad-flag" else 1, debug=True)
    if failure == "bad-flag":
        assert "token=***" in message
    assert_nowhere(token_forms(token), [run.stdout, run.stderr], [])
