"""SIP layer of the presence engine, sans-IO: message parsing and serialisation, transactions.

One job per module: ``grammar`` (tokens, parameters, host:port, ParseError), ``headers`` (names
and the header table), ``uri`` (SIP URIs, name-addrs), ``via`` (Via), ``parse`` (Request,
Response, parse_message), ``framing`` (TCP framing), ``build`` (responses and requests),
``sniff`` (the fast response path), ``refuse`` (a new SUBSCRIBE refused from its bytes),
``transaction`` (transaction tables), ``tokens`` (random branches and tags). The gevent
transport is ``presence/node/transport.py``, not imported here.
"""

from .build import build_request, build_response
from .framing import StreamFramer
from .grammar import ParseError, is_token
from .headers import Headers
from .parse import Request, Response, parse_message
from .refuse import PlainSubscribe, plain_new_subscribe, refusal
from .sniff import sniff_response
from .transaction import ClientTransactions, ServerTransactions
from .uri import NameAddr, SipUri, parse_name_addr, parse_uri
from .via import Via, parse_via

__all__ = [
    "ClientTransactions",
    "Headers",
    "NameAddr",
    "ParseError",
    "PlainSubscribe",
    "Request",
    "Response",
    "ServerTransactions",
    "SipUri",
    "StreamFramer",
    "Via",
    "build_request",
    "build_response",
    "is_token",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "plain_new_subscribe",
    "refusal",
    "sniff_response",
]
