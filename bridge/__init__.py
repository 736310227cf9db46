"""FreeSWITCH events -> Kazoo/pua_json-style presence updates -> bus (memory or NSQ).

bridge/ produces plain dicts and never imports presence/ (the engine validates what it gets).
"""
