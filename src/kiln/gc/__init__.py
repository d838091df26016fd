"""Bounded, inspectable local state: ``kiln du``, ``kiln prune`` and the automatic cap.

``$KILN_ROOT`` holds results that only save time: every entry can go, and a build after
it redoes what it needs (a step reruns, a layer is fetched and unpacked again, a cache
mount starts from its import or empty). What must never happen is a later build that is
wrong or fails because of a half-removed state, or a running build losing something it
uses. The modules:

- :mod:`~kiln.gc.inventory` — every byte under the root in one entry
  (:mod:`~kiln.gc.entries`) or kind, sizes on disk that add up to ``du``'s
  (:mod:`~kiln.gc.sizes` remembers the sizes of trees that never change, and
  :mod:`~kiln.gc.measure` counts the same bytes reading no file: the check after each
  build is cheap);
- :mod:`~kiln.gc.policy` — what a prune removes: least recently used first, dangling
  only unless ``--all``, ``--keep-storage``, ``until=``;
- :mod:`~kiln.gc.delete` — removing it, each entry under the lock its users take;
- :mod:`~kiln.gc.collect` — one prune at a time; :mod:`~kiln.gc.auto` — ``KILN_ROOT_MAX``.

**Consistency.** A step record goes before the blob it names (a record whose blob is gone
is a miss), a blob only once no remaining record or mount state names it, a cache mount's
directory together with its state (the directory first: a state without its directory is
never used for a delta). Snapshots are made again from blobs. Files written by kiln are
atomic, so a prune that dies midway leaves entries that are whole or gone.

**Running builds** (and a prune that runs while they do). A build holds a *lease*,
``tmp/build-*.lock``, locked for its whole run; its mtime is the build's start. Every use
marks what it uses with the time (the mtime of a record, a blob, a snapshot's or cache
mount's lock file, a download's ``meta.json``). A prune keeps everything used at or after
the *fence*, the start of the oldest live lease; so whatever a running build used stays
until it ends. The check and the use cannot cross: records and blobs are marked under the
use lock (``blobs/gc.lock``, shared for an instant by users, exclusive while the prune
checks and deletes one entry), snapshots are held shared while mounted, a cache mount
while a step uses it, a download while it is fetched, and the prune takes those locks
without waiting (busy: it stays). Context views and hash memos, which builds do not
mark, go only while no other build runs. Times are compared as the file system stamps
them (``kiln.state.fs_now``), never with the wall clock. The automatic prune runs in the
finished build, its own lease included in the fence: the build's own results stay.

**Without ``--all``** (buildx prunes "dangling" cache) kiln removes what nothing kept can
use: records that cannot hit (unreadable, blob gone), blobs no record or mount state
names unless their layer is unpacked (a base image's layers stay with their snapshots),
snapshots of layers no record and no blob has, mount states whose directory is gone,
incomplete downloads, leftovers of interrupted writes (an hour old), dead sessions, and
context trees and step-position lists no record needs. ``--all`` removes everything,
subject to ``until=`` and ``--keep-storage``.
"""
