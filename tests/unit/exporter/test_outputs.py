"""-o/--output parsing (as buildx)."""

from __future__ import annotations

import pytest

from kiln.errors import UsageError
from kiln.exporter.base import LocalOutput, RegistryOutput, TarOutput, parse_outputs


def test_output_forms():
    tags = ("r/a:1",)
    assert parse_outputs(["out"], tags, False) == [LocalOutput("out")]
    assert parse_outputs(["type=local,dest=d"], tags, False) == [LocalOutput("d")]
    assert parse_outputs(["type=oci,dest=x.tar"], tags, False) == [TarOutput("oci", "x.tar", tags)]
    assert parse_outputs(["type=image,push=true"], tags, False) == [RegistryOutput(tags)]
    assert parse_outputs(["type=image"], tags, False)[0].push is False
    assert parse_outputs([], tags, True) == [RegistryOutput(tags)]
    (out,) = parse_outputs(['type=registry,"name=r/b:1,r/c:2",oci-mediatypes=false'], (), False)
    assert out == RegistryOutput(("r/b:1", "r/c:2"), oci_mediatypes=False)


@pytest.mark.parametrize(
    ("values", "push", "needle"),
    [
        (["type=zip,dest=x"], False, "unknown type"),
        (["type=docker"], False, "dest is required"),
        (["type=local,dest=x,y=z"], False, "unknown attribute"),
        (["type=registry,push=maybe"], False, "must be true or false"),
        ([], True, "--push needs at least one"),
        (["-"], False, "not supported"),
    ],
)
def test_output_errors(values, push, needle):
    with pytest.raises(UsageError, match=needle):
        parse_outputs(values, (), push)
