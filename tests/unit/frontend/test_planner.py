"""The planner: Dockerfile → stages, steps and image config, without running anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fixtures.planner import HOST, FakeResolver, plan

from kiln.errors import DockerfileError, UsageError
from kiln.frontend.base import (
    BindMount,
    CacheMount,
    ContextSource,
    CopyOp,
    ExecOp,
    InlineSource,
    MkdirOp,
    ScratchBase,
    StageBase,
    StageSource,
)
from kiln.image import ImageConfig


def test_metadata_instructions_shape_the_config(tmp_path: Path):
    p = plan(
        tmp_path,
        """FROM scratch
ENV A=1 B="two words"
ENV C=${A}-${B:-x}
LABEL k=v "with space"=yes
EXPOSE 80 53/udp
VOLUME ["/data"]
USER 1000:1000
WORKDIR /app
WORKDIR sub
STOPSIGNAL SIGINT
SHELL ["/bin/bash", "-c"]
CMD echo hi
ENTRYPOINT ["run"]
HEALTHCHECK --interval=1m30s --retries=2 CMD ["true"]
ONBUILD RUN echo later
""",
    )
    config = p.target_stage.config
    assert config is not None
    env = config.env_map()
    assert (env["A"], env["B"], env["C"]) == ("1", "two words", "1-two words")
    assert config.labels == {"k": "v", "with space": "yes"}
    assert set(config.exposed_ports) == {"80/tcp", "53/udp"}
    assert config.workdir == "/app/sub"
    assert config.shell == ["/bin/bash", "-c"]
    assert config.cmd == ["/bin/bash", "-c", "echo hi"]  # set in this stage: kept
    assert config.entrypoint == ["run"]
    assert config.healthcheck == {"Test": ["CMD", "true"], "Interval": 90 * 10**9, "Retries": 2}
    assert config.onbuild == ["RUN echo later"]
    ops = [s.op for s in p.target_stage.steps]
    assert ops == [MkdirOp("/app", "1000:1000"), MkdirOp("/app/sub", "1000:1000")]


def test_cmd_survives_a_later_entrypoint_only_when_set_in_the_stage(tmp_path: Path):
    base = ImageConfig(platform=HOST, cmd=["sh"])
    resolver = FakeResolver({"img": base})
    p = plan(tmp_path, 'FROM img\nENTRYPOINT ["x"]\n', resolver=resolver)
    assert p.target_stage.config.cmd is None  # inherited CMD is reset by ENTRYPOINT
    p = plan(tmp_path, 'FROM img\nCMD ["y"]\nENTRYPOINT ["x"]\n', resolver=FakeResolver())
    assert p.target_stage.config.cmd == ["y"]


def test_run_env_includes_args_but_not_their_history(tmp_path: Path):
    p = plan(
        tmp_path,
        "ARG V=1\nFROM scratch\nARG V\nARG W=w\nENV E=e\nRUN echo $V\n",
        build_args={"V": "9", "HTTP_PROXY": "http://proxy:3128"},
    )
    (step,) = p.target_stage.steps
    assert isinstance(step.op, ExecOp)
    assert step.op.args == ("/bin/sh", "-c", "echo $V")  # the shell expands, not kiln
    assert "V=9" in step.op.env and "W=w" in step.op.env and "E=e" in step.op.env
    assert step.op.proxy_env == ("HTTP_PROXY=http://proxy:3128",)  # not in the key
    history = p.target_stage.config.history[step.history_index].created_by
    assert history.startswith("RUN |2 V=9 W=w /bin/sh -c echo $V")
    assert "proxy" not in history
    assert p.warnings == []


def test_unused_build_args_warn(tmp_path: Path):
    p = plan(tmp_path, "FROM scratch\n", build_args={"NOPE": "1", "HTTP_PROXY": "http://p:1"})
    # predefined proxy args never warn
    assert p.warnings == ["build-args not consumed by the Dockerfile: NOPE"]


def test_stages_dependencies_and_target(tmp_path: Path):
    text = """FROM img AS one
RUN echo one
FROM one AS two
COPY --from=one /a /b
RUN --mount=type=cache,target=/c --mount=type=bind,from=one,target=/m true
FROM img AS unused
RUN false
FROM two
"""
    resolver = FakeResolver()
    p = plan(tmp_path, text, resolver=resolver)
    assert sorted(p.stages) == [0, 1, 3]  # "unused" is never planned
    assert p.needed_order() == [0, 1, 3]
    two = p.stages[1]
    assert two.base == StageBase(0)
    copy = two.steps[0].op
    assert isinstance(copy, CopyOp) and copy.source == StageSource(0)
    run = two.steps[1].op
    assert isinstance(run, ExecOp)
    cache, bind = run.mounts
    assert isinstance(cache, CacheMount) and cache.id == "/c"
    assert isinstance(bind, BindMount) and bind.from_stage == 0
    p = plan(tmp_path, text, target="one", resolver=FakeResolver())
    assert list(p.stages) == [0]
    with pytest.raises(UsageError, match="--target nope: no such stage") as info:
        plan(tmp_path, text, target="nope")
    assert info.value.exit_code == 2 and "stages: one" in str(info.value)


def test_copy_sources_are_keyed_by_content(tmp_path: Path):
    text = "FROM scratch\nCOPY a.txt /a\n"
    first = plan(tmp_path, text, files={"a.txt": "one"}).target_stage.steps[0].op
    second = plan(tmp_path, text, files={"a.txt": "two"}).target_stage.steps[0].op
    assert isinstance(first, CopyOp) and isinstance(first.source, ContextSource)
    assert isinstance(second, CopyOp) and isinstance(second.source, ContextSource)
    assert first.source.digest != second.source.digest


def test_copy_destination_and_heredoc(tmp_path: Path):
    p = plan(
        tmp_path,
        "FROM scratch\nWORKDIR /w\nCOPY a b ./\nCOPY <<EOF rel.txt\nhi $X\nEOF\n",
        files={"a": "a", "b": "b"},
        build_args={},
    )
    copy, inline = (s.op for s in p.target_stage.steps[1:])
    assert isinstance(copy, CopyOp) and copy.dest == "/w/"
    assert isinstance(inline, CopyOp) and isinstance(inline.source, InlineSource)
    assert inline.dest == "/w/rel.txt"


@pytest.mark.parametrize(
    ("text", "needle", "line"),
    [
        ("FROM scratch\nCOPY a b c\n", "must be a directory and end with a /", 2),
        ("FROM scratch\nRUN --network=moon true\n", "invalid --network", 2),
        ("FROM scratch\nRUN --mount=type=nfs,target=/x true\n", "unsupported mount type", 2),
        ("FROM scratch\nSHELL /bin/bash\n", "SHELL requires the JSON form", 2),
        ("FROM scratch\nHEALTHCHECK --interval=soon CMD true\n", "invalid duration", 2),
        ("FROM scratch\nEXPOSE eighty\n", "invalid port", 2),
        ("FROM scratch\nCOPY --chmod=rwx a /a\n", "invalid --chmod", 2),
        ("FROM scratch\nENV A=${B\n", "missing '}'", 2),
        ("ARG X\nFROM ${X}\n", "should not be blank", 2),
        ("RUN true\nFROM scratch\n", "before the first FROM", 1),
        ("FROM --platform=linux scratch\n", "invalid platform 'linux'", 1),
        ("FROM scratch AS 1bad\n", "invalid stage name", 1),
        ("FROM scratch\nONBUILD FROM x\n", "not allowed in ONBUILD", 2),
    ],
)
def test_dockerfile_errors_name_file_and_line(tmp_path: Path, text: str, needle: str, line: int):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(DockerfileError) as info:
        plan(tmp_path, text)
    assert needle in str(info.value)
    assert info.value.line == line
    assert str(info.value).startswith(f"Dockerfile:{line}:")


def test_scratch_gets_default_path(tmp_path: Path):
    p = plan(tmp_path, "FROM scratch\n")
    assert p.target_stage.base == ScratchBase()
    assert p.target_stage.config.env_map()["PATH"].startswith("/usr/local/sbin")


def test_onbuild_triggers_of_the_base_run_first(tmp_path: Path):
    base = ImageConfig(platform=HOST, onbuild=["RUN echo triggered", "ENV T=1"])
    p = plan(tmp_path, "FROM parent\nRUN echo mine\n", resolver=FakeResolver({"parent": base}))
    stage = p.target_stage
    assert [s.text for s in stage.steps] == ["RUN echo triggered", "RUN echo mine"]
    assert stage.config.onbuild == []  # triggers are consumed, not inherited
    assert stage.config.env_map()["T"] == "1"


def test_automatic_platform_args_and_meta_args_on_one_line(tmp_path: Path):
    p = plan(
        tmp_path,
        "ARG A=1 B=${A}x\nFROM --platform=$BUILDPLATFORM scratch AS build\n"
        "ARG TARGETARCH\nARG B\nENV ARCH=$TARGETARCH B=$B\nFROM build\n",
    )
    env = p.target_stage.config.env_map()
    assert env["ARCH"] == "amd64"
    assert env["B"] == "1x"


@pytest.mark.parametrize(
    ("text", "stage", "line"),
    [
        ("FROM scratch AS s\nCOPY --from=s /a /a\n", "s", 2),  # the stage itself
        ("FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nCOPY --from=a /y /y\n",
         "b", 3),  # b (the target) → a → b
        ("FROM scratch AS s\nRUN --mount=type=bind,from=s,target=/m true\n", "s", 2),
    ],
)  # fmt: skip
def test_a_stage_reading_itself_or_a_cycle_is_an_error(tmp_path, text, stage, line):
    resolver = FakeResolver()
    with pytest.raises(DockerfileError, match=f"circular dependency detected on stage: {stage}"
                       ) as info:  # fmt: skip
        plan(tmp_path, text, resolver=resolver)
    assert info.value.line == line
    assert resolver.asked == []  # never taken for an image on Docker Hub


def test_copy_from_a_later_stage_is_that_stage(tmp_path):
    text = "FROM scratch AS first\nCOPY --from=later /x /x\nFROM scratch AS later\nCOPY x /x\n"
    (tmp_path / "x").write_text("x")
    resolver = FakeResolver()
    p = plan(tmp_path, text, target="first", resolver=resolver)
    assert isinstance(p.stages[0].steps[0].op, CopyOp)
    assert p.stages[0].steps[0].op.source == StageSource(1)
    assert sorted(p.stages) == [0, 1] and resolver.asked == []
