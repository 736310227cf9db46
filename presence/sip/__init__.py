"""SIP layer of the presence engine: sans-IO message parsing and transactions, gevent transport.

The transport module (gevent) is not imported here so the sans-IO parts stay importable alone.
"""

from .message import (
    Headers,
    NameAddr,
    ParseError,
    Request,
    Response,
    SipUri,
    StreamFramer,
    Via,
    build_request,
    build_response,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
)
from .transaction import ClientTransactions, ServerTransactions

__all__ = [
    "ClientTransactions",
    "Headers",
    "NameAddr",
    "ParseError",
    "Request",
    "Response",
    "ServerTransactions",
    "SipUri",
    "StreamFramer",
    "Via",
    "build_request",
    "build_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
]
