"""Layer creation and extraction stream: peak memory does not grow with the layer size.

Measured in a fresh interpreter (``ru_maxrss`` is a process-wide high-water mark, so the
test process itself would hide growth behind earlier peaks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SIZE = 200 << 20
BLOCK = 4 << 20
LIMIT_KIB = 48 << 10  # growth allowed: queues, buffers, codec state — not the layer

SCRIPT = r"""
import json, resource, sys
from pathlib import Path
from kiln.content import BlobStore
from kiln.differ.layer import write_layer
from kiln.snapshot.unpack import unpack_layer

upper, blobs, warm, out = map(Path, sys.argv[1:5])
compression = sys.argv[5]

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

store = BlobStore(blobs)
small = write_layer(warm, store, compression=compression)   # load code, spin up the thread
with open(store.path(small.digest), "rb") as fh:
    unpack_layer(fh, compression, out / "warm", mode="apply")
before = peak()
layer = write_layer(upper, store, compression=compression)
after_write = peak()
(out / "big").mkdir()
with open(store.path(layer.digest), "rb") as fh:
    diff_id = unpack_layer(fh, compression, out / "big", mode="apply")
after_unpack = peak()
print(json.dumps({
    "write": after_write - before,
    "unpack": after_unpack - after_write,
    "blob": layer.blob.size,
    "ok": diff_id == layer.diff_id,
}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="unpack restores ownership: needs root")
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_peak_rss_stays_flat_for_a_200mb_file(tmp_path: Path, compression: str) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    noise = os.urandom(BLOCK)
    with open(upper / "big.bin", "wb") as fh:  # incompressible blocks between holes
        for offset in range(0, SIZE, 2 * BLOCK):
            fh.seek(offset)
            fh.write(noise)
        fh.truncate(SIZE)
    warm = tmp_path / "warm"
    warm.mkdir()
    (warm / "f").write_bytes(b"x" * 1000)
    out = tmp_path / "out"
    (out / "warm").mkdir(parents=True)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [str(upper), str(tmp_path / "blobs"), str(warm), str(out), compression]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"]
    assert result["blob"] > SIZE // 2 - (1 << 20)  # the noise really was incompressible
    assert result["write"] < LIMIT_KIB, result
    assert result["unpack"] < LIMIT_KIB, result
    assert (out / "big" / "big.bin").stat().st_size == SIZE
