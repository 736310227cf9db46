"""Event packages: body rendering per SIP event package (no I/O)."""

from __future__ import annotations

from busylamp.presence.packages.base import EventPackage, PackageOptions, RenderedBody
from busylamp.presence.packages.dialog import DialogPackage
from busylamp.presence.packages.message_summary import MessageSummaryPackage
from busylamp.presence.packages.pidf import PidfPackage

__all__ = ["REGISTRY", "EventPackage", "PackageOptions", "RenderedBody"]

REGISTRY: dict[str, EventPackage] = {
    package.name: package for package in (DialogPackage(), MessageSummaryPackage(), PidfPackage())
}
