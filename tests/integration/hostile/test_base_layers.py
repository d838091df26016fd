"""Hostile base images, crafted layer by layer and pushed with the registry API.

Every image is read both ways kiln reads layers: unpacked for overlayfs (the ``overlay``
view: ``FROM scratch`` + ``COPY --from=<image> / /`` copies what a step would see) and
applied one on another (the ``applied`` view: ``FROM <image>`` written out with
``-o type=local``). Both must hold what the layers say — or the build must fail with one
clear error — and nothing outside kiln's own root may change (the canary).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tarfile
import time
import zlib
from pathlib import Path

import pytest
from tests.fixtures.build import corrupt, make_context
from tests.fixtures.hostile import (
    OCI_LAYER_GZIP,
    Canary,
    RegistryAPI,
    clean_error,
    gz,
    image_layers,
    layer,
    member,
    push_image,
    raw_header,
    sha256,
    tree,
)
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.integration

UP = "../" * 30  # more than enough to climb from any unpack directory to /
LOWER = [member("etc/", type=tarfile.DIRTYPE, mode=0o755), member("etc/keep", "keep\n"),
         member("top", "top\n")]  # fmt: skip


def repo() -> str:
    return f"hostile/img-{secrets.token_hex(4)}"


def overlay_view(kiln, ref: str, tmp_path: Path):
    """The image as a step sees it (its layers unpacked for overlayfs and mounted)."""
    out = tmp_path / "overlay"
    ctx = make_context(tmp_path / "ctx-overlay", f"FROM scratch\nCOPY --from={ref} / /\n")
    return kiln("build", "-o", f"type=local,dest={out}", ctx, root=tmp_path / "root-o"), out


def applied_view(kiln, ref: str, tmp_path: Path):
    """The image's layers applied one on another and written out."""
    out = tmp_path / "applied"
    ctx = make_context(tmp_path / "ctx-applied", f"FROM {ref}\n")
    return kiln("build", "-o", f"type=local,dest={out}", ctx, root=tmp_path / "root-a"), out


def both_views(kiln, ref: str, tmp_path: Path) -> tuple[Path, Path]:
    o, overlay = overlay_view(kiln, ref, tmp_path)
    a, applied = applied_view(kiln, ref, tmp_path)
    o.check()
    a.check()
    return overlay, applied


def both_refused(kiln, ref: str, tmp_path: Path, *needles: str) -> None:
    for run, out in (overlay_view(kiln, ref, tmp_path), applied_view(kiln, ref, tmp_path)):
        clean_error(run, *needles, code=1)
        assert not out.exists(), "a refused image was written out"


# --- names that try to leave the root ----------------------------------------------------


def test_absolute_member_names_stay_inside_the_image(kiln, api, canary: Canary, tmp_path):
    ref = push_image(api, repo(), [gz(layer([member("/" + canary.rel + "/pwned", "x")]))])
    for view in both_views(kiln, ref, tmp_path):
        assert (view / canary.rel / "pwned").read_text() == "x"
    canary.check()


@pytest.mark.parametrize("kind", ["file", "whiteout", "symlink"])
def test_dot_dot_member_names_are_refused(kiln, api, canary: Canary, tmp_path, kind: str):
    name = UP + canary.rel + {"file": "/pwned", "whiteout": "/.wh.secret", "symlink": "/link"}[kind]
    extra = {"symlink": {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}}.get(kind, {})
    ref = push_image(api, repo(), [gz(layer([member(name, "x", **extra)]))])
    both_refused(kiln, ref, tmp_path, "points outside the layer root", "do not use this image")
    canary.check()


@pytest.mark.parametrize("target", ["relative", "replacing-a-lower-dir"])
def test_a_file_written_through_a_symlink_stays_inside_the_image(
    kiln, api, canary: Canary, tmp_path, target: str
):
    link = "/" + canary.rel if target != "relative" else UP + canary.rel
    name = "etc" if target == "replacing-a-lower-dir" else "link"
    hostile = [member(name, type=tarfile.SYMTYPE, linkname=link), member(f"{name}/secret", "pwned"),
               member(f"{name}/sub/keep", "pwned")]  # fmt: skip
    ref = push_image(api, repo(), [gz(layer(LOWER)), gz(layer(hostile))])
    for view in both_views(kiln, ref, tmp_path):
        assert os.readlink(view / name) == link  # the link itself, as the layer says
        assert (view / canary.rel / "secret").read_text() == "pwned"  # inside the image
        assert (view / "top").read_text() == "top\n"
    canary.check()


@pytest.mark.parametrize("how", ["dot-dot", "through-a-symlink"])
def test_a_hardlink_to_a_host_file_is_refused(kiln, api, canary: Canary, tmp_path, how: str):
    members = {
        "dot-dot": [member("hl", type=tarfile.LNKTYPE, linkname=UP + canary.rel + "/secret")],
        "through-a-symlink": [
            member("link", type=tarfile.SYMTYPE, linkname="/" + canary.rel),
            member("hl", type=tarfile.LNKTYPE, linkname="link/secret"),
        ],
    }[how]
    ref = push_image(api, repo(), [gz(layer(members))])
    needle = "points outside the layer root" if how == "dot-dot" else "which does not exist"
    both_refused(kiln, ref, tmp_path, "hardlink" if how != "dot-dot" else "member", needle)
    canary.check()  # includes: the canary's link count is still 1


def test_a_nul_byte_in_a_member_name_is_refused(kiln, api, tmp_path):
    # a PAX path record (a ustar name field would simply end at the NUL)
    ref = push_image(api, repo(), [gz(layer([member("x", "x", pax=(("path", "evil\x00name"),))]))])
    both_refused(kiln, ref, tmp_path, "NUL byte")


# --- whiteouts and overlay bookkeeping ---------------------------------------------------


@pytest.mark.parametrize("name", ["/.wh...", "etc/.wh.."])
def test_whiteouts_of_the_root_or_dot_dot_delete_nothing(kiln, api, tmp_path, name: str):
    ref = push_image(api, repo(), [gz(layer(LOWER)), gz(layer([member(name)]))])
    overlay, applied = both_views(kiln, ref, tmp_path)
    assert tree(overlay) == tree(applied)
    assert (applied / "etc" / "keep").read_text() == "keep\n"
    assert (applied / "top").read_text() == "top\n"


def test_an_opaque_root_hides_the_lower_layers_in_both_views(kiln, api, tmp_path):
    upper = [member(".wh..wh..opq"), member("new", "new\n")]
    ref = push_image(api, repo(), [gz(layer(LOWER)), gz(layer(upper))])
    overlay, applied = both_views(kiln, ref, tmp_path)
    assert sorted(tree(applied)) == ["new"]
    assert tree(overlay) == tree(applied)


def test_overlay_xattrs_in_a_layer_do_not_steer_the_mount(kiln, api, tmp_path):
    """A directory claiming ``trusted.overlay.opaque=y`` (or a redirect) in its PAX
    header: kiln must not set it on the lowerdir, or the lower /etc would vanish."""
    xattrs = (("SCHILY.xattr.trusted.overlay.opaque", "y"),
              ("SCHILY.xattr.trusted.overlay.redirect", "/top"))  # fmt: skip
    upper = [member("etc/", type=tarfile.DIRTYPE, mode=0o755, pax=xattrs),
             member("etc/upper", "upper\n")]  # fmt: skip
    ref = push_image(api, repo(), [gz(layer(LOWER)), gz(layer(upper))])
    overlay, applied = both_views(kiln, ref, tmp_path)
    assert (overlay / "etc" / "keep").read_text() == "keep\n"
    assert (overlay / "etc" / "upper").read_text() == "upper\n"
    assert tree(overlay) == tree(applied)


def test_device_nodes_of_an_image_cannot_be_opened_by_a_step_nor_land_on_the_host(
    kiln, api, busybox_image: str, tmp_path
):
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    if major == 0:  # / is not a block device here: take the first one the kernel lists
        rows = [r.split() for r in Path("/proc/partitions").read_text().splitlines()[2:] if r]
        if not rows:
            pytest.skip("no block device to point a device node at")
        major, minor = int(rows[0][0]), int(rows[0][1])
    name = repo()
    devices = [
        member("disk", type=tarfile.BLKTYPE, devmajor=major, devminor=minor, mode=0o666),
        member("kmsg", type=tarfile.CHRTYPE, devmajor=1, devminor=11, mode=0o666),
    ]
    ref = push_image(api, name, [gz(layer(devices))], under=image_layers(api, busybox_image, name))
    ctx = make_context(
        tmp_path / "ctx",
        f"FROM {ref}\nRUN (head -c 512 /disk | wc -c) > /disk-bytes; "
        "(head -c 16 /kmsg | wc -c) > /kmsg-bytes; true\n",
    )
    out = tmp_path / "out"
    run = kiln("build", "-o", f"type=local,dest={out}", ctx).check()
    assert (out / "disk-bytes").read_text().strip() == "0", run.stderr  # the host's disk
    assert (out / "kmsg-bytes").read_text().strip() == "0", run.stderr
    assert not (out / "disk").exists() and not (out / "kmsg").exists()  # devices=false


# --- broken archives ---------------------------------------------------------------------

GOOD = layer([member("a", "a" * 3000), member("b", "b\n")])


@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (gz(raw_header("big", 1 << 70) + b"x" * 1024), "not a valid tar archive"),
        (gz(GOOD[:1200]), "not a valid tar archive"),
        (gz(GOOD)[:-20], "cannot be decompressed"),
    ],
    ids=["size-2^70", "truncated-tar", "truncated-gzip"],
)
def test_a_broken_archive_is_one_error(kiln, api, canary: Canary, tmp_path, blob, needle):
    ref = push_image(api, repo(), [blob], diff_ids=[sha256(b"unknowable")],
                     media_types=[OCI_LAYER_GZIP])  # fmt: skip
    both_refused(kiln, ref, tmp_path, needle)
    canary.check()


def test_a_layer_whose_bytes_do_not_match_its_digest_is_refused(
    kiln, api, registry: RegistryServer, tmp_path
):
    # bytes of its own: the registry keeps one copy of a blob for every repository
    blob = gz(layer([member("unique", secrets.token_hex(16))]))
    ref = push_image(api, repo(), [blob])
    digest = sha256(blob)
    data = registry.storage / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
    corrupt(data)  # the registry now serves other bytes under that digest
    both_refused(kiln, ref, tmp_path, digest, "does not match its digest")


def test_a_gzip_bomb_after_the_archive_is_hashed_not_stored(kiln, api, tmp_path):
    """256 MiB of zeros after the end-of-archive blocks, ~260 KiB compressed: the diff ID
    covers them (so the config is right), nothing of them reaches the disk."""
    tail_mib = 256
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    digest = hashlib.sha256(GOOD)
    parts = [squeeze.compress(GOOD)]
    zeros = bytes(1 << 20)
    for _ in range(tail_mib):
        parts.append(squeeze.compress(zeros))
        digest.update(zeros)
    blob = b"".join(parts) + squeeze.flush()
    assert len(blob) < 1 << 20
    ref = push_image(api, repo(), [blob], diff_ids=["sha256:" + digest.hexdigest()])
    started = time.monotonic()
    overlay, applied = both_views(kiln, ref, tmp_path)
    assert time.monotonic() - started < 60
    for view in (overlay, applied):
        assert sorted(tree(view)) == ["a", "b"]
    used = sum(p.lstat().st_size for p in (tmp_path / "root-o").rglob("*"))
    assert used < 16 << 20, f"{used} bytes under KILN_ROOT"


# --- manifests and configs that lie ------------------------------------------------------


def test_a_manifest_listing_a_layer_twice_gives_its_content_once(kiln, api, tmp_path):
    blob = gz(GOOD)
    ref = push_image(api, repo(), [blob, blob])
    overlay, applied = both_views(kiln, ref, tmp_path)
    assert tree(overlay) == tree(applied)
    assert (applied / "b").read_text() == "b\n"


def test_a_config_with_a_wrong_diff_id_is_refused(kiln, api, tmp_path):
    ref = push_image(api, repo(), [gz(GOOD)], diff_ids=[sha256(b"another layer")])
    both_refused(kiln, ref, tmp_path, "diff ID", sha256(b"another layer"))


def test_a_config_with_fewer_diff_ids_than_layers_is_refused(kiln, api, tmp_path):
    ref = push_image(api, repo(), [gz(GOOD), gz(layer([member("c", "c")]))],
                     config={"rootfs": {"type": "layers", "diff_ids": [sha256(GOOD)]}})  # fmt: skip
    both_refused(kiln, ref, tmp_path, "inconsistent", "2 layers but 1 diff IDs")


def test_a_layer_of_an_unknown_media_type_is_refused(kiln, api, tmp_path):
    ref = push_image(api, repo(), [gz(GOOD)], media_types=["application/vnd.evil.layer"])
    for run, out in (overlay_view(kiln, ref, tmp_path), applied_view(kiln, ref, tmp_path)):
        clean_error(run, "unknown media type", "Dockerfile:", ref, code=1)
        assert not out.exists()


def test_a_descriptor_smaller_than_its_blob_is_refused(kiln, api, tmp_path):
    ref = push_image(api, repo(), [gz(GOOD)], sizes=[10])
    both_refused(kiln, ref, tmp_path, "larger than its 10 bytes")


def test_a_descriptor_larger_than_its_blob_never_reaches_an_output(
    kiln, api: RegistryAPI, tmp_path
):
    ref = push_image(api, repo(), [gz(GOOD)], sizes=[1 << 40])
    ctx = make_context(tmp_path / "ctx", f"FROM {ref}\nCOPY m /m\n", {"m": "m"})
    image = tmp_path / "image.tar"
    run = kiln("build", "-o", f"type=oci,dest={image}", ctx)
    if run.returncode != 0:  # refusing the image is as good
        clean_error(run, code=1)
        return
    with tarfile.open(image) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"))  # type: ignore[arg-type]
        sizes = {d["digest"]: d["size"] for d in manifest["layers"]}
        real = {d: tar.getmember(f"blobs/sha256/{d[7:]}").size for d in sizes}
    assert sizes == real
