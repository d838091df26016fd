"""Running the server: backends from options, uvicorn, logging that never shows secrets."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from kiln.errors import UsageError
from kiln.gha.server.app import create_app
from kiln.gha.server.metadata.base import MetadataStore
from kiln.gha.server.settings import ServerSettings
from kiln.gha.server.storage.filesystem import FilesystemStorage

log = logging.getLogger("kiln.gha.server")


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = "", text
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"invalid --listen {text!r}", hint="use HOST:PORT, e.g. 0.0.0.0:8585")
        return cls(host, int(port))


def open_metadata(root: Path, database: str | None) -> MetadataStore:
    if database is None or database.startswith("sqlite:"):
        from kiln.gha.server.metadata.sqlite import SqliteMetadata

        path = Path(database[len("sqlite:") :]) if database else root / "metadata.sqlite3"
        return SqliteMetadata(path)
    if database.startswith(("postgres://", "postgresql://")):
        from kiln.gha.server.metadata.postgres import PostgresMetadata

        return PostgresMetadata(database)
    raise UsageError(
        "unknown --database", hint="use postgresql://USER@HOST/DB or sqlite:PATH (the default)"
    )


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("kiln.gha.server")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def run(listen: Listen, root: Path, settings: ServerSettings, database: str | None) -> int:
    root.mkdir(parents=True, exist_ok=True)
    storage = FilesystemStorage(root / "storage")
    metadata = open_metadata(root, database)
    app = create_app(settings, storage, metadata)
    config = uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        access_log=False,  # ours logs paths only: query strings carry URL signatures
        log_level="warning",
        lifespan="on",
        server_header=False,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    log.info(
        "serving the GitHub Actions cache on http://%s:%d (root %s, max size %d bytes)",
        listen.host,
        listen.port,
        root,
        settings.max_size,
    )
    try:
        server.run()
    finally:
        metadata.close()
    return 0 if server.started else 1
