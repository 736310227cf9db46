"""``busylamp demo``: a simulated office driving the real bridge, engine and SIP watchers."""
