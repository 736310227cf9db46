"""FreeSWITCH event socket: sans-IO protocol and session, gevent client, a FreeSWITCH simulator, and
the greenswitch connection of ``busylamp tail --esl`` (greenswitch_tail)."""

from busylamp.esl.protocol import EslEvent, EslFrame, FrameParser, encode_event, parse_event

__all__ = ["EslEvent", "EslFrame", "FrameParser", "encode_event", "parse_event"]
