"""The embedded broker: kombu's filesystem transport, with messages written atomically.

kombu's filesystem transport creates a message file and then writes it; a consumer polling
the folder can move and read the file in between, get an empty payload, and die on the
JSON error (seen as "Unrecoverable error: JSONDecodeError" in the control worker). Here a
message is written under a name no consumer matches and renamed into place when whole.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "berthfs"


class Channel(filesystem.Channel):
    """A filesystem channel whose ``_put`` is atomic."""

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu passes kwargs
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot and a trailing suffix: consumers match "<id>.<queue>.msg" only.
        draft = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(draft, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(draft, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    """kombu's filesystem transport with the atomic channel."""

    Channel = Channel


def register() -> None:
    """Makes ``berthfs://`` a kombu transport (idempotent; every process calls it via broker)."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
