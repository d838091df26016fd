"""Cache keys change exactly when a step's inputs change."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.planner import FakeResolver, plan

from kiln.solver.keys import compute_keys


def keys_of(tmp_path: Path, text: str, **kw):
    p = plan(tmp_path, text, **kw)
    return p, compute_keys(p)


def test_keys_are_stable_and_chain(tmp_path: Path):
    text = "FROM scratch\nCOPY a /a\nRUN echo 1\nRUN echo 2\n"
    _, k1 = keys_of(tmp_path, text, files={"a": "x"})
    _, k2 = keys_of(tmp_path, text, files={"a": "x"})
    assert k1 == k2
    assert len(set(k1[0].steps)) == 3
    # a change early changes every later key; a change late leaves earlier keys alone
    _, k3 = keys_of(tmp_path, text.replace("echo 2", "echo two"), files={"a": "x"})
    assert k3[0].steps[:2] == k1[0].steps[:2] and k3[0].steps[2] != k1[0].steps[2]
    _, k4 = keys_of(tmp_path, text, files={"a": "y"})
    assert all(a != b for a, b in zip(k4[0].steps, k1[0].steps, strict=True))


def test_metadata_between_steps_matters_only_through_run_env(tmp_path: Path):
    _, base = keys_of(tmp_path, "FROM scratch\nRUN true\n")
    _, label = keys_of(tmp_path, "FROM scratch\nLABEL a=b\nRUN true\n")
    _, env = keys_of(tmp_path, "FROM scratch\nENV A=b\nRUN true\n")
    _, user = keys_of(tmp_path, "FROM scratch\nUSER nobody\nRUN true\n")
    assert label[0].final == base[0].final  # labels do not affect the filesystem
    assert env[0].final != base[0].final
    assert user[0].final != base[0].final


def test_copy_from_a_stage_is_keyed_by_the_stage_key(tmp_path: Path):
    text = "FROM scratch AS a\nCOPY f /f\nFROM scratch\nCOPY --from=a /f /g\n"
    _, k1 = keys_of(tmp_path, text, files={"f": "1"})
    _, k2 = keys_of(tmp_path, text, files={"f": "2"})
    assert k1[0].final != k2[0].final
    assert k1[1].final != k2[1].final  # follows the stage's key, no files needed


def test_base_image_digest_is_part_of_the_key(tmp_path: Path):
    class Other(FakeResolver):
        def resolve(self, ref, platform):
            image = super().resolve(ref, platform)
            return type(image)(ref, ref, "sha256:" + "1" * 64, image.config, ())

    _, k1 = keys_of(tmp_path, "FROM img\nRUN true\n")
    _, k2 = keys_of(tmp_path, "FROM img\nRUN true\n", resolver=Other())
    assert k1[0].base != k2[0].base and k1[0].final != k2[0].final


def test_cache_mount_content_is_not_in_the_key_but_its_target_is(tmp_path: Path):
    _, a = keys_of(tmp_path, "FROM scratch\nRUN --mount=type=cache,target=/c true\n")
    _, b = keys_of(tmp_path, "FROM scratch\nRUN --mount=type=cache,target=/d true\n")
    assert a[0].final != b[0].final


def test_proxy_args_and_epoch(tmp_path: Path):
    text = "FROM scratch\nRUN true\n"
    _, plain = keys_of(tmp_path, text)
    _, proxied = keys_of(tmp_path, text, build_args={"HTTPS_PROXY": "http://p:1"})
    assert plain[0].final == proxied[0].final  # a proxy never changes what a step makes
    p = plan(tmp_path, text)
    assert compute_keys(p, 1700000000)[0].final != compute_keys(p)[0].final
