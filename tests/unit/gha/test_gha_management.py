"""The management API (stats, listing, removal) and its client."""

from __future__ import annotations

import pytest
from tests.fixtures.gha import AppHarness, Wire, token_for

from kiln.errors import CacheError
from kiln.gha.scopes import READ
from kiln.gha.server.management import ManagementClient

VERSION = "f" * 64


def test_stats_counts_hits_and_misses(gha_app: AppHarness) -> None:
    w = Wire(gha_app.client, token_for("main"))
    w.v1_save("k", VERSION, b"12345")
    w.v1_lookup(["k"], VERSION)
    w.v1_lookup(["k"], VERSION)
    w.v1_lookup(["missing"], VERSION)
    w.v2_lookup("missing", VERSION)
    with ManagementClient(gha_app.url, token_for("main")) as client:
        stats = client.stats()
    assert stats["entries"] == 1 and stats["bytes"] == 5
    assert stats["hits"] == 2 and stats["misses"] == 2
    assert stats["evictions"] == 0 and stats["pending_uploads"] == 0
    assert gha_app.client.get("/_kiln/v1/stats").status_code == 401
    assert gha_app.client.get("/_kiln/health").json() == {"ok": True}


def test_list_and_remove(gha_app: AppHarness) -> None:
    Wire(gha_app.client, token_for("main")).v1_save("deps-a", VERSION, b"a")
    Wire(gha_app.client, token_for("pr")).v1_save("deps-b", VERSION, b"b")
    with ManagementClient(gha_app.url, token_for(admin=True)) as admin:
        listed = admin.entries()
        assert {(e.scope, e.key) for e in listed} == {("main", "deps-a"), ("pr", "deps-b")}
        assert [e.key for e in admin.entries(scope="pr")] == ["deps-b"]
        assert [e.key for e in admin.entries("deps-a")] == ["deps-a"]
        victim = next(e for e in listed if e.key == "deps-a")
        assert admin.remove(victim.id).key == "deps-a"
        with pytest.raises(CacheError, match=r"\(404\)"):
            admin.remove(victim.id)  # already gone
    w = Wire(gha_app.client, token_for("main"))
    assert w.v1_lookup(["deps-a"], VERSION).status_code == 204
    assert w.v1_reserve("deps-a", VERSION).status_code == 201  # the key is free again


def test_non_admin_tokens_see_and_remove_only_their_scopes(gha_app: AppHarness) -> None:
    Wire(gha_app.client, token_for("main")).v1_save("m", VERSION, b"m")
    Wire(gha_app.client, token_for("pr")).v1_save("p", VERSION, b"p")
    with ManagementClient(gha_app.url, token_for("pr", ("main", READ))) as pr:
        entries = {e.key: e for e in pr.entries()}
        assert set(entries) == {"m", "p"}
        with pytest.raises(CacheError) as err:
            pr.remove(entries["m"].id)  # read-only on main
        assert "403" in str(err.value)
        assert pr.remove(entries["p"].id).key == "p"
    with ManagementClient(gha_app.url, token_for("other")) as other:
        assert other.entries() == []
        with pytest.raises(CacheError, match=r"\(403\)"):
            other.entries(scope="main")
        with pytest.raises(CacheError, match=r"\(403\)"):
            other.evict()  # admin only


def test_bad_token_is_an_error_with_a_hint(gha_app: AppHarness) -> None:
    with ManagementClient(gha_app.url, "not-a-token") as client, pytest.raises(CacheError) as err:
        client.stats()
    assert err.value.hint and "admin" in err.value.hint


def test_the_management_client_never_goes_through_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.gha.server.management import ManagementClient

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("ALL_PROXY", "http://proxy.invalid:3128")
    with ManagementClient("http://127.0.0.1:1", "admin-token") as client:
        assert client._client.trust_env is False  # the admin token goes straight to the server
