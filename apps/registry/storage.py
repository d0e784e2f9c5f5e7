"""Artifact storage (Django's storage API) and the upload handler that streams into it.

Uploads never sit in memory: the handler writes each chunk to a temporary file under the
data dir, computing the sha256 on the way and stopping with 413 the moment the body
passes the tenant's ``max_artifact_mb``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.core.files.storage import Storage, storages
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile
from django.core.signing import BadSignature, SignatureExpired, TimestampSigner

from control_plane.errors import ApplicationError

SIGNING_SALT = "berth.artifact"


class ArtifactTooLargeError(ApplicationError):
    """The upload is larger than the tenant may store."""

    status_code: int = 413


def artifact_storage() -> Storage:
    """Where artifacts live: the data dir by default, S3 when ``BERTH_ARTIFACT_STORAGE=s3``."""
    return storages["artifacts"]


class HashedUpload(TemporaryUploadedFile):
    """An uploaded file on disk with its sha256, computed while it streamed in."""

    sha256: str


class ArtifactUploadHandler(FileUploadHandler):
    """Streams the ``file`` field to disk with its digest; refuses it past ``limit_bytes``."""

    def __init__(self, request: Any = None, *, limit_bytes: int) -> None:
        super().__init__(request)
        self.limit_bytes = limit_bytes
        self._digest = hashlib.sha256()
        self._size = 0
        self._file: HashedUpload | None = None

    def new_file(self, field_name: str, *args: Any, **kwargs: Any) -> None:
        if field_name != "file" or self._file is not None:
            # One artifact per upload, in the field 'file': other file parts are not stored.
            raise SkipFile()
        super().new_file(field_name, *args, **kwargs)
        self._digest = hashlib.sha256()
        self._size = 0
        # In FILE_UPLOAD_TEMP_DIR, on the data dir's filesystem: storing it is a rename.
        self._file = HashedUpload(
            self.file_name or "upload", self.content_type, 0, self.charset, self.content_type_extra
        )

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self._size += len(raw_data)
        if self._size > self.limit_bytes:
            self.discard()
            raise ArtifactTooLargeError(
                f"the artifact is over this tenant's limit of {self.limit_bytes // 1024**2} MiB "
                "(max_artifact_mb); ask platform staff to raise the quota"
            )
        self._digest.update(raw_data)
        assert self._file is not None
        self._file.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> HashedUpload | None:
        assert self._file is not None
        self._file.seek(0)
        self._file.size = file_size
        self._file.sha256 = self._digest.hexdigest()
        return self._file

    def upload_interrupted(self) -> None:
        self.discard()

    def discard(self) -> None:
        """Deletes the partial file (on refusal or an interrupted upload)."""
        if self._file is not None:
            self._file.close()  # a NamedTemporaryFile: closing deletes it
            self._file = None


def artifact_token(*, version_id: int, sha256: str) -> str:
    """A signed token for one version's artifact; the URL carries it, the worker needs no login."""
    return TimestampSigner(salt=SIGNING_SALT).sign(f"{version_id}:{sha256}")


def artifact_token_check(token: str, *, max_age_s: int) -> tuple[int, str] | None:
    """The (version id, sha256) a token grants, or None when forged or expired."""
    try:
        value = TimestampSigner(salt=SIGNING_SALT).unsign(token, max_age=max_age_s)
    except (BadSignature, SignatureExpired):
        return None
    version_id, _, sha256 = value.partition(":")
    if not version_id.isdigit() or len(sha256) != 64:
        return None
    return int(version_id), sha256
