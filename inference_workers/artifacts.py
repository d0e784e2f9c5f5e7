"""The worker's artifact cache: fetch by URI, verify the sha256, keep by digest.

Workers never share a disk with the control plane: artifacts come over HTTP(S) (a
short-lived signed URL from the registry) or, on one machine, as ``file://`` paths. Every
artifact is streamed into the cache with its sha256 computed on the way, and used only
if the digest matches what the load command says.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from inference_workers.errors import LoadError

CHUNK = 1024 * 1024


class ArtifactError(LoadError):
    """The artifact could not be fetched, or its digest does not match."""


class ArtifactCache:
    """Artifacts by sha256 under ``<data dir>/artifact-cache``."""

    def __init__(self, folder: Path, *, max_bytes: int = 16 * 1024**3, timeout_s: float = 60.0) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path_for(self, sha256: str) -> Path:
        """Where the artifact with this digest lives once fetched."""
        return self.folder / sha256[:2] / sha256

    def fetch(self, uri: str, sha256: str) -> Path:
        """Returns the local path of the verified artifact, fetching it if needed.

        Raises:
            ArtifactError: Unreachable URI, too large, or a digest mismatch.
        """
        with self._guard:
            lock = self._locks.setdefault(sha256, threading.Lock())
        with lock:
            target = self.path_for(sha256)
            if target.exists():
                return target
            handle, temporary = self._draft(target)
            try:
                with os.fdopen(handle, "wb") as out:
                    digest = self._copy(uri, out)
                if digest != sha256:
                    raise ArtifactError(
                        f"artifact {_redact(uri)} has sha256 {digest}, expected {sha256}; it was changed or corrupted"
                    )
                os.chmod(temporary, 0o400)
                os.replace(temporary, target)
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
            return target

    @staticmethod
    def _draft(target: Path) -> tuple[int, str]:
        """A temporary file beside ``target``. Its folder (shared by digests with the same first
        two characters) can vanish between mkdir and mkstemp when an unload removes it, now
        that fetches run beside each other: then it is made again."""
        attempts = 3
        while True:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                return tempfile.mkstemp(dir=target.parent, prefix=".fetch-")
            except FileNotFoundError:
                attempts -= 1
                if not attempts:
                    raise

    def _copy(self, uri: str, out: object) -> str:
        parsed = urlparse(uri)
        digest = hashlib.sha256()
        written = 0
        try:
            if parsed.scheme == "file":
                source = open(unquote(parsed.path), "rb")  # noqa: SIM115 — closed below
            elif parsed.scheme in ("http", "https"):
                source = urllib.request.urlopen(uri, timeout=self._timeout_s)
            else:
                raise ArtifactError(f"unsupported artifact URI scheme in {uri!r}; use http(s):// or file://")
        except (OSError, urllib.error.URLError) as exc:
            raise ArtifactError(f"cannot fetch artifact {_redact(uri)}: {exc}") from exc
        with source:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                if written > self._max_bytes:
                    raise ArtifactError(f"artifact {_redact(uri)} is larger than {self._max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)  # type: ignore[attr-defined]
        return digest.hexdigest()

    def remove(self, sha256: str) -> None:
        """Deletes a cached artifact (after its last model is unloaded)."""
        target = self.path_for(sha256)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        with contextlib.suppress(OSError):
            target.parent.rmdir()  # only when no other artifact shares the folder


def _redact(uri: str) -> str:
    """The URI without its query string (which holds the signed token)."""
    return uri.split("?", 1)[0]
