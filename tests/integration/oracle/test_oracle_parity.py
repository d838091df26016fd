"""kiln against BuildKit (Docker's built-in frontend) on the same contexts.

Each case builds one context with ``DOCKER_BUILDKIT=1 docker build`` and with kiln, then
compares the root filesystems (paths, types, permission bits, owners, contents, symlink
targets, which files are hard links of each other; never mtimes), the image configs and
the history (texts, ``empty_layer`` flags, one layer per non-empty entry).

kiln's filesystem is taken two ways: its ``type=local`` output, and its own layers (from
the ``type=oci`` archive) applied in order — so the layers kiln pushes, whiteouts
included, are checked as well as the directory it writes. Docker's filesystem is its
``docker save`` layers applied the same way (not ``docker export``, which adds the
container's own files: ``/.dockerenv``, ``/etc/hosts``, ``/etc/hostname``, ...).

What is left out or normalised, each time because the builder adds it, not the Dockerfile:
- A step that changes nothing (``WORKDIR`` of an existing directory): Docker 20.10 stores
  its empty layer (the 1024-byte empty tar) with a non-empty history entry; BuildKit's own
  image exporter, which kiln follows, drops such layers and marks the entry
  ``empty_layer``. The oracle's image is normalised that way before comparing.

Where the BuildKit inside Docker 20.10 predates a behaviour change, the oracle's result is
set to the current behaviour, path by path (on a newer engine these change nothing):
- ``ADD --chown`` of a local archive: v0.8 ignores ``--chown`` for the extracted members;
  since v0.23 (moby/buildkit#5987) the members take the owner, while directories the
  archive only implies stay 0:0 and the destination's other content keeps its owner.
- ``COPY --chmod``: v0.8 drops setuid/setgid/sticky bits, kept since v0.13 (fsutil#168,
  moby/buildkit#3920); directories the copy creates get 0755 in v0.8 and the --chmod
  permission bits since v0.21 (fsutil 183e7fb "copy: fix custom chmod for parent
  directories").

History ``created_by`` texts are compared exactly, except for instructions whose text
BuildKit changed after v0.8: ``ARG`` (v0.8 records the declared default, later releases
the value in effect), ``EXPOSE`` (a Go map then, a list in Dockerfile order now: compared
as sorted port lists), ``COPY``/``ADD`` (``--chown``/``--chmod`` added in v0.13,
moby/buildkit#4597: left out of both texts for the comparison, kiln's checked on their own)
and ``HEALTHCHECK`` (a Go struct dump that gains fields between releases: the keyword only).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import io
import itertools
import json
import lzma
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.build import KilnRun, make_context
from tests.fixtures.docker import DockerEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# ------------------------------------------------------------------------------ tree model


@dataclass(frozen=True)
class Node:
    kind: str  # dir | file | symlink | char | block | fifo
    mode: int  # permission bits with setuid/setgid/sticky; 0 for symlinks
    uid: int
    gid: int
    data: str = ""  # sha256 of a file, target of a symlink, "major,minor" of a device
    inode: int = dataclasses.field(default=0, compare=False)  # equal for hard links

    def __str__(self) -> str:
        return f"{self.kind} {self.mode:04o} {self.uid}:{self.gid} {self.data}".rstrip()


Tree = dict[str, Node]  # "/a/b" → node (the root itself is not listed)

_TAR_KINDS = {
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


_inodes = itertools.count(1)


def hard_links(tree: Tree) -> set[frozenset[str]]:
    """Groups of paths that are one file (hard links)."""
    groups: dict[int, set[str]] = {}
    for path, node in tree.items():
        if node.kind == "file":
            groups.setdefault(node.inode, set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def _norm(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def _remove_below(tree: Tree, path: str, *, keep_self: bool) -> None:
    prefix = path.rstrip("/") + "/"
    for key in [k for k in tree if k.startswith(prefix) or (k == path and not keep_self)]:
        del tree[key]


def apply_layer(tree: Tree, layer: bytes) -> None:
    """Apply one layer tar (plain or gzip) to *tree*, whiteouts first (they only ever
    refer to lower layers), then this layer's entries in order."""
    if layer[:2] == b"\x1f\x8b":
        layer = gzip.decompress(layer)
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
        members = tar.getmembers()
        for m in members:
            path = _norm(m.name)
            parent, _, base = path.rpartition("/")
            if base == ".wh..wh..opq":
                _remove_below(tree, parent or "/", keep_self=True)
            elif base.startswith(".wh."):
                _remove_below(tree, f"{parent}/{base[4:]}", keep_self=False)
        for m in members:
            path = _norm(m.name)
            if path == "/" or path.rpartition("/")[2].startswith(".wh."):
                continue
            if m.islnk():
                target = tree[_norm(m.linkname)]
                node = target
            elif m.isreg():
                content = tar.extractfile(m)
                assert content is not None
                digest = hashlib.sha256(content.read()).hexdigest()
                inode = next(_inodes)
                node = Node("file", m.mode & 0o7777, m.uid, m.gid, digest, inode)
            else:
                kind = _TAR_KINDS[m.type]
                data = m.linkname if kind == "symlink" else ""
                if kind in ("char", "block"):
                    data = f"{m.devmajor},{m.devminor}"
                mode = 0 if kind == "symlink" else m.mode & 0o7777
                node = Node(kind, mode, m.uid, m.gid, data)
            old = tree.get(path)
            if old is not None and old.kind == "dir" and node.kind != "dir":
                _remove_below(tree, path, keep_self=True)
            tree[path] = node


def tree_of_dir(root: Path) -> Tree:
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            host = Path(dirpath) / name
            st = os.lstat(host)
            path = "/" + str(host.relative_to(root))
            fmt = stat.S_IFMT(st.st_mode)
            mode = stat.S_IMODE(st.st_mode)
            if fmt == stat.S_IFDIR:
                node = Node("dir", mode, st.st_uid, st.st_gid)
            elif fmt == stat.S_IFLNK:
                node = Node("symlink", 0, st.st_uid, st.st_gid, os.readlink(host))
            elif fmt == stat.S_IFREG:
                digest = hashlib.sha256(host.read_bytes()).hexdigest()
                node = Node("file", mode, st.st_uid, st.st_gid, digest, st.st_ino)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                kind = "char" if fmt == stat.S_IFCHR else "block"
                dev = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
                node = Node(kind, mode, st.st_uid, st.st_gid, dev)
            else:
                node = Node("fifo", mode, st.st_uid, st.st_gid)
            tree[path] = node
    return tree


# ------------------------------------------------------------------------------ images


@dataclass
class Image:
    config: dict[str, Any]
    tree: Tree


def docker_image(docker: DockerEngine, tag: str) -> Image:
    """Docker's config (as BuildKit wrote it) and its layers applied, from ``docker save``."""
    with tarfile.open(fileobj=io.BytesIO(docker.run_bytes("save", tag)), mode="r:") as tar:

        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            assert member is not None, name
            return member.read()

        (entry,) = json.loads(read("manifest.json"))
        config = json.loads(read(entry["Config"]))
        tree: Tree = {}
        for layer in entry["Layers"]:
            apply_layer(tree, read(layer))
    drop_empty_layers(config)
    return Image(config, tree)


EMPTY_TAR_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


def drop_empty_layers(config: dict[str, Any]) -> None:
    """What BuildKit's image exporter does with a step that changed nothing (see the
    module doc): no layer, and its history entry marked ``empty_layer``."""
    diff_ids = config["rootfs"]["diff_ids"]
    kept, index = [], 0
    for entry in config["history"]:
        if entry.get("empty_layer"):
            continue
        if diff_ids[index] == EMPTY_TAR_DIFF_ID:
            entry["empty_layer"] = True
        else:
            kept.append(diff_ids[index])
        index += 1
    config["rootfs"]["diff_ids"] = kept


def oci_image(archive: Path) -> Image:
    """kiln's config and its layers applied, from its ``type=oci`` archive."""
    with tarfile.open(archive, mode="r:") as tar:

        def blob(digest: str) -> bytes:
            member = tar.extractfile("blobs/sha256/" + digest.removeprefix("sha256:"))
            assert member is not None, digest
            return member.read()

        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            assert member is not None, name
            return member.read()

        index = json.loads(read("index.json"))
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        tree: Tree = {}
        for layer in manifest["layers"]:
            apply_layer(tree, blob(layer["digest"]))
    return Image(config, tree)


def as_current_buildkit(
    tree: Tree, path: str, *, mode: int | None = None, uid: int | None = None,
    gid: int | None = None,
) -> None:  # fmt: skip
    """Set the oracle's *path* to what a current BuildKit makes of it (see the module
    doc); on an engine whose BuildKit already has the change this changes nothing."""
    node = tree[path]
    changed = Node(
        node.kind,
        node.mode if mode is None else mode,
        node.uid if uid is None else uid,
        node.gid if gid is None else gid,
        node.data,
        node.inode,
    )
    tree[path] = changed


def tree_diff(expected: Tree, actual: Tree) -> list[str]:
    lines = []
    for path in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(path), actual.get(path)
        if want != got:
            lines.append(f"{path}: buildkit={want or '-'}  kiln={got or '-'}")
    return lines


CONFIG_KEYS = (
    "Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes",
    "Healthcheck", "StopSignal", "OnBuild", "Shell",
)  # fmt: skip


def config_diff(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    want, got = expected.get("config") or {}, actual.get("config") or {}
    return [
        f"{key}: buildkit={want.get(key)!r}  kiln={got.get(key)!r}"
        for key in CONFIG_KEYS
        if want.get(key) != got.get(key)
    ]


def _history_text(created_by: str, result: Compared, *, oracle: bool) -> str:
    """created_by as compared: exact, except where BuildKit's own text changed after v0.8
    (see the module doc)."""
    keyword, _, rest = created_by.partition(" ")
    if keyword == "ARG" and oracle:  # v0.8 records the declared default, now the value used
        words = []
        for word in rest.split(" "):
            name, eq, _ = word.partition("=")
            if name in result.build_args:
                word = f"{name}={result.build_args[name]}"
            elif not eq and name in result.meta_args:  # inherited from a global ARG
                word = f"{name}={result.meta_args[name]}"
            words.append(word)
        return "ARG " + " ".join(words)
    if keyword == "EXPOSE":  # v0.8 prints a Go map (sorted), now a list in Dockerfile order
        ports = rest.removeprefix("map[").removeprefix("[").removesuffix("]").split(" ")
        return "EXPOSE " + " ".join(sorted(p.removesuffix(":{}") for p in ports))
    if keyword == "HEALTHCHECK":  # a Go struct dump whose fields change between releases
        return keyword
    if keyword in ("COPY", "ADD"):  # v0.13 added --chown/--chmod to the text
        return " ".join(w for w in created_by.split(" ") if not w.startswith("--ch"))
    return created_by


def history_diff(result: Compared) -> list[str]:
    def entries(config: dict[str, Any], oracle: bool) -> list[tuple[str, bool]]:
        return [
            (_history_text(h["created_by"], result, oracle=oracle), bool(h.get("empty_layer")))
            for h in config["history"]
        ]

    want, got = entries(result.docker.config, True), entries(result.kiln.config, False)
    if want == got:
        return []
    lines = [f"buildkit {w}" for w in want if w not in got]
    return lines + [f"kiln     {g}" for g in got if g not in want] or ["order differs"]


def history_layers_consistent(config: dict[str, Any]) -> None:
    history = config.get("history") or []
    non_empty = [h for h in history if not h.get("empty_layer")]
    assert len(non_empty) == len(config["rootfs"]["diff_ids"]), json.dumps(history, indent=1)
    assert all(h.get("created_by") for h in history), history


# ------------------------------------------------------------------------------ the harness

Kiln = Callable[..., KilnRun]


@dataclass
class Compared:
    docker: Image
    kiln: Image
    kiln_local: Tree
    build_args: dict[str, str]
    meta_args: dict[str, str]


def build_both(
    kiln: Kiln,
    docker: DockerEngine,
    ctx: Path,
    work: Path,
    name: str,
    *args: str,
    build_args: dict[str, str] | None = None,
    meta_args: dict[str, str] | None = None,
) -> Compared:
    """Build *ctx* with BuildKit and with kiln (the same extra *args* and build args);
    *meta_args* are the values of the Dockerfile's global ARGs, for the history check."""
    build_args = build_args or {}
    args += tuple(a for k, v in build_args.items() for a in ("--build-arg", f"{k}={v}"))
    tag = f"kiln-oracle/{name}:latest"
    docker.build(ctx, tag, *args)
    local, archive = work / f"{name}-fs", work / f"{name}.oci.tar"
    kiln(
        "build", *args, "-o", f"type=local,dest={local}", "-o", f"type=oci,dest={archive}", ctx
    ).check()
    return Compared(
        docker_image(docker, tag), oci_image(archive), tree_of_dir(local),
        build_args, meta_args or {},
    )  # fmt: skip


def assert_same(result: Compared) -> None:
    expected = result.docker.tree
    docker_cfg, kiln_cfg = result.docker.config, result.kiln.config
    problems = [f"layers  {d}" for d in tree_diff(expected, result.kiln.tree)]
    problems += [f"local   {d}" for d in tree_diff(expected, result.kiln_local)]
    problems += [f"config  {d}" for d in config_diff(docker_cfg, kiln_cfg)]
    problems += [f"history {d}" for d in history_diff(result)]
    want_links = hard_links(expected)
    for name, tree in (("layers ", result.kiln.tree), ("local  ", result.kiln_local)):
        got = hard_links(tree)
        problems += [f"{name} hard links only in buildkit: {sorted(g)}" for g in want_links - got]
        problems += [f"{name} hard links only in kiln: {sorted(g)}" for g in got - want_links]
    assert not problems, "kiln differs from BuildKit:\n" + "\n".join(problems)
    for config in (docker_cfg, kiln_cfg):
        history_layers_consistent(config)


# ------------------------------------------------------------------------------ cases


def _bundle(compression: str = "gz") -> bytes:
    """A tar (``gz``, ``bz2``, ``xz`` or plain ``""``) as ``tar -C dir -czf`` makes them (a
    ``./`` entry first), with owners and modes of its own, a directory given explicitly
    and one only implied, and links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(
            name: str, kind: bytes, mode: int, owner: int, data: bytes = b"", link: str = ""
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = kind, mode, owner, owner + 1
            info.size, info.linkname = len(data), link
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("./", tarfile.DIRTYPE, 0o700, 7)
        add("./pkg/", tarfile.DIRTYPE, 0o750, 9)
        add("./pkg/one.txt", tarfile.REGTYPE, 0o640, 7, b"one")
        add("./pkg/sub/two.txt", tarfile.REGTYPE, 0o604, 7, b"two")
        add("./pkg/link", tarfile.SYMTYPE, 0o777, 7, link="one.txt")
        add("./pkg/hard", tarfile.LNKTYPE, 0o640, 7, link="./pkg/one.txt")
    compress: dict[str, Callable[[bytes], bytes]] = {
        "gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "": bytes,
    }  # fmt: skip
    return compress[compression](buf.getvalue())


BUNDLE_MEMBERS = ("/pkg", "/pkg/one.txt", "/pkg/sub/two.txt", "/pkg/link", "/pkg/hard")


def test_filesystem_features_match_buildkit(
    kiln: Kiln, docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image} AS base
RUN echo "app:x:1234:2345::/home/app:/bin/sh" >> /etc/passwd \\
 && echo "grp:x:2345:" >> /etc/group && mkdir -p /home/app && chown app:grp /home/app \\
 && mkdir -p /srv/existing && chmod 0700 /srv/existing

FROM base AS builder
ARG VERSION=1.0
ENV BUILD_DIR=/build
WORKDIR $BUILD_DIR/out
RUN echo "version ${{VERSION}}" > version.txt && ln -s version.txt current \\
 && mkdir -p sub/deeper && echo x > sub/deeper/file && chmod 0751 sub \\
 && ln -s /nowhere dangling && ln version.txt hardlink && chmod 4755 version.txt \\
 && chown 1234:2345 sub/deeper/file && mkdir empty && chmod 1770 empty
RUN ["/bin/sh", "-c", "echo exec form > /build/out/exec.txt; mkfifo /build/out/fifo"]

FROM base
COPY --from=builder /build/out/ /srv/app/
COPY --from=builder /build/out/current /srv/followed.txt
COPY --from={busybox_image} /etc/passwd /srv/image-passwd
COPY --chown=app:grp --chmod=0640 conf/*.conf /etc/app/
COPY --chown=42:43 bin/ /srv/bin/
COPY --chmod=0750 dir/ /srv/chmod-dir/
COPY --chmod=4755 files/a.txt /srv/suid/
COPY dir /srv/existing
COPY dir emptydir /srv/two-dirs/
COPY --chown=1234 files/a.txt /srv/numeric-chown/a.txt
COPY --from=builder --chown=42 /build/out/sub /srv/from-chown/
COPY ["name with space.txt", "emptydir", "/srv/spaced/"]
COPY dir /srv/dir
COPY dir/ /srv/dir-contents/
COPY files/a.txt files/b.txt /srv/multi/
COPY files/a.txt /srv/renamed
COPY files/ /srv/new/nested/
COPY files/a.txt /opt/owned/pre-existing
ADD bundle.tar.gz /opt/
ADD --chown=app bundle.tar.gz /opt/owned/
ADD --chown=42:43 bundle.tar.gz /opt/fresh/
ADD bundle.tar bundle.tar.bz2 bundle.tar.xz /opt/other-formats/
ADD plain.gz /srv/not-a-tar/
COPY bundle.tar.gz /srv/copied/
COPY linkdir/ /srv/via-link/
COPY linkdir /srv/via-link2
COPY *.txt /srv/glob/
COPY files/a.txt /usr/bin/through-symlinked-dir
COPY . /ctx/
RUN rm /bin/vi && rm -r /var/tmp && echo changed >> /etc/group && rm /srv/renamed
RUN rm -r /srv/dir && echo now-a-file > /srv/dir && rm /srv/multi/a.txt \\
 && mkdir /srv/multi/a.txt && rm -r /etc/app && mkdir /etc/app && echo new > /etc/app/fresh
RUN true
WORKDIR /tmp
WORKDIR /created/by/root
USER app
WORKDIR /home/app/work/deep
RUN id > id.txt && mkdir made-by-app && touch made-by-app/f
COPY files/a.txt ./relative-dest
USER 1234
WORKDIR /srv/numeric-user-workdir
RUN touch /tmp/known-uid && id > /tmp/known-uid.id
USER 4242
RUN touch /tmp/unknown-uid && id > /tmp/unknown-uid.id
USER 1234:0
WORKDIR relative
RUN touch numeric-user
""",
        {
            "conf/a.conf": "a\n",
            "conf/b.conf": "b\n",
            "conf/skip.txt": "not a conf\n",
            "bin/tool": "#!/bin/sh\necho tool\n",
            "bin/lib/helper": "helper\n",
            "dir/one": "1\n",
            "dir/sub/two": "2\n",
            "files/a.txt": "A\n",
            "files/b.txt": "B\n",
            "name with space.txt": "spaced\n",
            "bundle.tar.gz": _bundle(),
            "bundle.tar": _bundle(""),
            "bundle.tar.bz2": _bundle("bz2"),
            "bundle.tar.xz": _bundle("xz"),
            "plain.gz": gzip.compress(b"not a tar\n"),
            "match.txt/inner": "a directory matched by *.txt\n",
            "a/temp1/x": "ignored by */temp*\n",
            "b/c/tempo/y": "ignored by **/tempo\n",
            ".dockerignore": (
                "**/*.log\nsecret/\n!keep.log\nnode_modules\n!node_modules/keep.js\n"
                "*/temp*\n**/tempo\n/top.txt\n!/top.txt\n"
            ),
            "top.txt": "excluded, then re-included\n",
            "debug.log": "no\n",
            "keep.log": "yes\n",
            "deep/x/trace.log": "no\n",
            "deep/x/ok.txt": "ok\n",
            "secret/key": "no\n",
            "node_modules/m.js": "no\n",
            "node_modules/keep.js": "yes\n",
        },
    )
    (ctx / "emptydir").mkdir()
    os.chmod(ctx / "emptydir", 0o711)
    os.chmod(ctx / "bin" / "tool", 0o755)
    os.chmod(ctx / "dir" / "sub", 0o700)
    os.chmod(ctx / "files" / "b.txt", 0o600)
    os.symlink("files/a.txt", ctx / "link-to-a")
    os.symlink("dir", ctx / "linkdir")
    os.link(ctx / "files" / "b.txt", ctx / "files" / "b-hardlink.txt")
    os.symlink("/etc/passwd", ctx / "absolute-link")
    result = build_both(kiln, docker_engine, ctx, tmp_path, "files")
    oracle = result.docker.tree
    for member in BUNDLE_MEMBERS:  # ADD --chown reaches the archive's members
        as_current_buildkit(oracle, "/opt/owned" + member, uid=1234, gid=2345)
        as_current_buildkit(oracle, "/opt/fresh" + member, uid=42, gid=43)
    as_current_buildkit(oracle, "/srv/chmod-dir", mode=0o750)  # created with the --chmod
    as_current_buildkit(oracle, "/srv/suid/a.txt", mode=0o4755)  # --chmod keeps setuid
    assert_same(result)
    # the text current BuildKit writes for a COPY with flags (compared without them above)
    created_by = [h["created_by"] for h in result.kiln.config["history"]]
    assert "COPY --chown=app:grp --chmod=0640 conf/*.conf /etc/app/ # buildkit" in created_by


CONFIG_DOCKERFILE = """ARG BASE={base}
ARG UNAME=nobody
FROM ${{BASE}} AS base
RUN echo "app:x:1234:2345::/home/app:/bin/sh" >> /etc/passwd && echo "grp:x:2345:" >> /etc/group

FROM base AS entry-only
WORKDIR /entry/
STOPSIGNAL 9
HEALTHCHECK NONE
ENTRYPOINT echo entry "$HOME"

FROM base
ARG UNAME
ARG VERSION=1.0
ARG FLAVOR
ARG PORT=7000
ARG EMPTY=
ENV APP=/srv/app \\
    VERSION_COPY=${{VERSION}} \\
    FLAVOR_OR=${{FLAVOR:-vanilla}} \\
    HAS_VERSION=${{VERSION:+yes}} \\
    EMPTY_OR=${{EMPTY:-default}} \\
    QUOTED="two words" \\
    LITERAL=\\$HOME
ENV PATH=$APP/bin:$PATH
ENV OLDSTYLE value with spaces
ENV abc=hello
ENV abc=bye def=$abc VOL=/vol
LABEL org.opencontainers.image.version=$VERSION "com.example.quoted"="a b" multi.one=1
LABEL com.example.flavor=${{FLAVOR:-none}} com.example.empty="" user=$UNAME
LABEL multi.line="line one \\
line two"
EXPOSE 8080 53/UDP 9000-9002/tcp
EXPOSE $PORT
VOLUME /data /more
VOLUME ["/logs", "/cache"]
VOLUME $VOL
USER app
WORKDIR $APP
SHELL ["/bin/sh", "-ec"]
RUN echo "$VERSION_COPY $FLAVOR_OR $PORT" > /tmp/shell-form && id -un >> /tmp/shell-form
HEALTHCHECK --interval=30s --timeout=5s --start-period=1m --retries=4 CMD ["/bin/true"]
STOPSIGNAL SIGTERM
ONBUILD RUN echo child > /child
ONBUILD COPY . /child-context/
ENTRYPOINT ["/bin/sh", "-c"]
CMD echo "$APP"
"""


def test_image_config_matches_buildkit(
    kiln: Kiln, docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    ctx = make_context(tmp_path / "ctx", CONFIG_DOCKERFILE.format(base=busybox_image))
    result = build_both(
        kiln, docker_engine, ctx, tmp_path, "config",
        build_args={"FLAVOR": "mint"}, meta_args={"UNAME": "nobody"},
    )  # fmt: skip
    assert_same(result)
    entry = build_both(
        kiln, docker_engine, ctx, tmp_path, "entry", "--target", "entry-only",
        meta_args={"UNAME": "nobody"},
    )  # fmt: skip
    assert_same(entry)
