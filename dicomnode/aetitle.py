"""AE titles and ``AE@HOST:PORT`` addresses: small value types the config, the CLI and the senders share.

Why a module of its own: ``dicomnode.config`` assembles the sections each part owns (the destination
config classes live in ``dicomnode.deliver``), and both need these without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def validate_ae_title(value: str) -> str:
    """An AE title as DICOM PS3.5 allows it: 1-16 chars of the default repertoire, no backslash."""
    if not isinstance(value, str):
        raise ValueError("AE title must be a string")
    stripped = value.strip(" ")
    if not stripped:
        raise ValueError("AE title is empty")
    if len(stripped) > 16:
        raise ValueError(f"AE title {stripped!r} is longer than 16 characters")
    if "\\" in stripped or any(ord(c) < 0x20 or ord(c) > 0x7E for c in stripped):
        raise ValueError(f"AE title {stripped!r} contains a backslash or a non-printable/non-ASCII character")
    return stripped


@dataclass(frozen=True)
class AEAddress:
    """A remote application entity, written ``AE@HOST:PORT`` on the command line."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "AEAddress":
        """Parse ``AE@HOST:PORT`` (IPv6 hosts in brackets: ``AE@[::1]:104``)."""
        m = re.fullmatch(r"(?P<ae>[^@]+)@(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:@\[\]]+)):(?P<port>\d+)", text.strip())
        if not m:
            raise ValueError(f"{text!r} is not AE@HOST:PORT (example: PACS@10.0.0.5:104)")
        port = int(m["port"])
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} in {text!r} is outside 1-65535")
        return cls(validate_ae_title(m["ae"]), m["v6"] or m["host"], port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"
