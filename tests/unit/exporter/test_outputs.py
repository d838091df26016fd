"""-o/--output parsing (as buildx): each type= chooses its exporter, which parses its spec."""

from __future__ import annotations

import pytest

from kiln.build import exporters
from kiln.errors import UsageError
from kiln.exporter.base import Output, parse_outputs
from kiln.exporter.outputs.archive import TarOutput
from kiln.exporter.outputs.local import LocalOutput
from kiln.exporter.outputs.registry import RegistryOutput


def _specs(values: list[str], tags: tuple[str, ...], push: bool) -> list[object]:
    outputs = parse_outputs(values, tags, push, exporters())
    assert all(isinstance(o, Output) for o in outputs)
    return [o.spec for o in outputs if isinstance(o, Output)]


def test_output_forms():
    tags = ("r/a:1",)
    assert _specs(["out"], tags, False) == [LocalOutput("out")]
    assert _specs(["type=local,dest=d"], tags, False) == [LocalOutput("d")]
    assert _specs(["type=oci,dest=x.tar"], tags, False) == [TarOutput("oci", "x.tar", tags)]
    assert _specs(["type=docker,dest=x.tar"], tags, False) == [TarOutput("docker", "x.tar", tags)]
    assert _specs(["type=image,push=true"], tags, False) == [RegistryOutput(tags)]
    assert _specs(["type=image"], tags, False) == [RegistryOutput(tags, push=False)]
    assert _specs([], tags, True) == [RegistryOutput(tags)]
    specs = _specs(['type=registry,"name=r/b:1,r/c:2",oci-mediatypes=false'], (), False)
    assert specs == [RegistryOutput(("r/b:1", "r/c:2"), oci_mediatypes=False)]


def test_output_flags_expose_what_the_build_needs():
    (registry, archive, local) = parse_outputs(
        ["type=registry,name=reg.example:5000/a,registry.insecure=true",
         "type=docker,dest=x.tar,oci-mediatypes=false", "dir"],
        (), False, exporters(),
    )  # fmt: skip
    assert registry.insecure_hosts == frozenset({"reg.example:5000"})
    assert registry.names == ("reg.example:5000/a",)
    assert (registry.oci_mediatypes, archive.oci_mediatypes, local.oci_mediatypes) == (
        True, False, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("values", "push", "needle"),
    [
        (["type=zip,dest=x"], False, "unknown type 'zip'"),
        (["type=docker"], False, "dest is required for type=docker"),
        (["type=local,dest=x,y=z"], False, "unknown attribute 'y' for type=local"),
        (["type=registry,push=maybe"], False, "push must be true or false"),
        (["type=registry,name=a,name=b"], False, "name is given twice"),
        (["type=registry,name=a,bare"], False, "'bare' is not key=value"),
        (["type=oci,dest=x,compression=zstd"], False, "compression is set for the whole build"),
        (["type=oci,dest=x,name=UPPER"], False, "invalid image reference"),
        (["type=registry"], False, "no image name to push"),
        ([], True, "--push needs at least one"),
        (["-"], False, "not supported"),
    ],
)
def test_output_errors(values, push, needle):
    with pytest.raises(UsageError, match=needle):
        parse_outputs(values, (), push, exporters())
