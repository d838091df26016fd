"""The one attribute grammar (kiln.attrs): CSV fields, repeated keys and bad values refused."""

from __future__ import annotations

import pytest

from kiln.attrs import Attrs, flag_error
from kiln.errors import UsageError


def parse(text: str, **kw: object) -> Attrs:
    return Attrs.parse(text, flag_error("--flag", text), **kw)  # type: ignore[arg-type]


def test_csv_quoting_as_buildx():
    attrs = parse('type=registry,"name=a:1,b:2",ref=x ,Key=V')
    assert attrs.values == {"type": "registry", "name": "a:1,b:2", "ref": "x ", "key": "V"}
    assert parse('"a=say ""hi"""').get("a") == 'say "hi"'
    assert parse("").values == {}


def test_bare_keys_and_aliases():
    attrs = parse("ro,dst=/x", bare={"readonly"}, aliases={"ro": "readonly", "dst": "target"})
    assert attrs.values == {"readonly": "true", "target": "/x"}
    assert attrs.boolean("readonly", False) is True


@pytest.mark.parametrize(
    ("text", "kw", "needle"),
    [
        ("a=1,a=2", {}, "a is given twice"),
        ("ro=1,readonly=0", {"aliases": {"ro": "readonly"}}, "readonly is given twice"),
        ("a=1,word", {}, "'word' is not key=value"),
        ("=v", {}, "'=v' is not key=value"),
        ('"a=open', {}, "cannot be read"),
        ('"a=1,b"x,c=2', {}, "cannot be read"),
    ],
)
def test_malformed_values_are_refused(text, kw, needle):
    with pytest.raises(UsageError, match=needle) as info:
        parse(text, **kw)
    assert info.value.what.startswith(f"--flag {text!r}: ")


@pytest.mark.parametrize(
    ("text", "read", "needle"),
    [
        (
            "push=maybe",
            lambda a: a.boolean("push", True),
            "push must be true or false, not 'maybe'",
        ),
        ("mode=mid", lambda a: a.choice("mode", ("min", "max"), "min"), "mode must be min or max"),
        ("uid=-1", lambda a: a.integer("uid", 0), "uid must be a whole number"),
        ("mode=0999", lambda a: a.integer("mode", 0, base=8), "mode must be an octal number"),
        ("level=12", lambda a: a.integer("level", 0, maximum=9), "from 0 to 9"),
        ("max-size=lots", lambda a: a.size("max-size"), "max-size must be a size"),
        ("timeout=soon", lambda a: a.duration("timeout", 1.0), "timeout must be a duration"),
        ("ref=", lambda a: a.required("ref", "registry"), "ref is required for type=registry"),
    ],
)
def test_bad_values_name_the_attribute(text, read, needle):
    with pytest.raises(UsageError, match=needle):
        read(parse(text))


def test_typed_getters_read_good_values():
    attrs = parse("push=false,mode=max,uid=1000,perm=0755,max-size=2GB,timeout=90s")
    assert attrs.boolean("push", True) is False
    assert attrs.boolean("absent", True) is True
    assert attrs.choice("mode", ("min", "max"), "min") == "max"
    assert attrs.integer("uid", 0) == 1000
    assert attrs.integer("perm", 0, base=8) == 0o755
    assert attrs.size("max-size") == 2 * 1000**3
    assert attrs.duration("timeout", 1.0) == 90.0


def test_check_names_the_unknown_attribute_and_the_known_ones():
    with pytest.raises(UsageError, match="unknown attribute 'colour' for type=local") as info:
        parse("dest=x,colour=red").check({"dest"}, "local")
    assert info.value.hint == "known: dest"


def test_credentials_are_redacted_whole():
    from kiln.attrs import redact

    assert redact("type=gha,token=abc,url=http://x/") == "type=gha,token=***,url=http://x/"
    assert redact('type=gha,"token=a,b",mode=max') == "type=gha,token=***,mode=max"
    assert (
        redact("type=s3,secret_access_key=k,region=r") == "type=s3,secret_access_key=***,region=r"
    )
    assert redact("type=registry,ref=r") == "type=registry,ref=r"
    # a quote inside a field splits the secret: the stray piece is not echoed either
    text = 'type=gha,token="s3c,r3t",version=3'
    with pytest.raises(UsageError) as info:
        parse(text)
    assert "r3t" not in str(info.value) and "s3c" not in str(info.value)
    assert "a field is not key=value" in str(info.value)
