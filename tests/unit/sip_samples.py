"""SIP messages shared by the SIP unit tests."""

SUBSCRIBE = (
    b"SUBSCRIBE sip:1000@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-abc;rport\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.4;branch=z9hG4bK-def\r\n"
    b'From: "Desk 1001" <sip:1001@example.com>;tag=ft1\r\n'
    b"To: <sip:1000@example.com>\r\n"
    b"Call-ID: cid-1@10.0.0.5\r\n"
    b"CSeq: 7 SUBSCRIBE\r\n"
    b"Contact: <sip:1001@10.0.0.5:5062>;expires=600\r\n"
    b"Record-Route: <sip:proxy1.example.com;lr>, <sip:proxy2.example.com;lr>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Event: Dialog;id=1\r\n"
    b"Accept: application/dialog-info+xml\r\n"
    b"Expires: 600\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
