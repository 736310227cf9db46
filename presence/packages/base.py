"""Event package interface and the pre-rendered NOTIFY body."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from busylamp.presence.state import Record

__all__ = ["EventPackage", "PackageOptions", "RenderedBody", "as_uri", "needs_escape", "xml_escape"]

_URI_SCHEME = re.compile(r"^(?:sips?|tel):", re.IGNORECASE)


class RenderedBody:
    """Body bytes rendered once per state change; `for_version` splices the per-watcher version.

    When `versioned` is False, `prefix` is the whole body and `suffix` is empty. Immutable by
    convention; a plain slotted class because one is made per render (a frozen dataclass's
    generated ``__init__`` costs several times more, on the SUBSCRIBE path).
    """

    __slots__ = ("prefix", "suffix", "versioned")

    def __init__(self, prefix: bytes, suffix: bytes = b"", versioned: bool = False) -> None:
        self.prefix = prefix
        self.suffix = suffix
        self.versioned = versioned

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RenderedBody)
            and (self.prefix, self.suffix, self.versioned)
            == (other.prefix, other.suffix, other.versioned)
        )

    def __hash__(self) -> int:
        return hash((self.prefix, self.suffix, self.versioned))

    def __repr__(self) -> str:
        return f"RenderedBody({self.prefix!r}, {self.suffix!r}, {self.versioned!r})"

    def for_version(self, version: int) -> bytes:
        if not self.versioned:
            return self.prefix
        return b"%s%d%s" % (self.prefix, version, self.suffix)

    def length(self, version: int) -> int:
        """Byte length of `for_version(version)` without building it."""
        if not self.versioned:
            return len(self.prefix)
        return len(self.prefix) + len(self.suffix) + len(str(version))


@dataclass(slots=True)
class PackageOptions:
    """Rendering switches (Kamailio presence_dialoginfo's options of the same names)."""

    force_dummy_dialog: bool = False
    force_single_dialog: bool = False


class EventPackage(Protocol):
    name: str
    content_type: str
    accept: tuple[str, ...]
    default_expires: int
    default_record_expires: int | None

    def render(
        self, presentity: str, records: Sequence[Record], options: PackageOptions
    ) -> RenderedBody: ...


_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"})


_SCHEMES = ("sip:", "sips:", "tel:")


def needs_escape(text: str) -> bool:
    """Whether ``text`` holds a character that :func:`xml_escape` changes."""
    # five substring tests (memchr each) cost a tenth of a regular expression's scan
    return "&" in text or "<" in text or ">" in text or '"' in text or "'" in text


def xml_escape(value: str) -> str:
    """Escape text for XML element content and double- or single-quoted attributes."""
    if needs_escape(value):
        return value.translate(_XML_ESCAPES)
    return value  # the usual case: numbers, URIs, ids


def as_uri(value: str) -> str:
    """`value` as a URI: unchanged when it has a sip:/sips:/tel: scheme, else ``sip:`` + value."""
    if value.startswith(_SCHEMES) or _URI_SCHEME.match(value):  # (the scheme in any case)
        return value
    return "sip:" + value
