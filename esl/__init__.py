"""FreeSWITCH event socket: sans-IO protocol and session, gevent client, and a FreeSWITCH simulator."""

from esl.protocol import EslEvent, EslFrame, FrameParser, encode_event, parse_event

__all__ = ["EslEvent", "EslFrame", "FrameParser", "encode_event", "parse_event"]
