"""The engine bench's NOTIFY phase alone, for instruction counting on a shared host.

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=map_next \\
        python bench/notify_phase.py TREE on|off|on-python

TREE is the source tree whose engine is measured (this one, or an older checkout); the harness
(SUBSCRIBEs, updates, 200 OKs: bench/engine.py of this tree) is the same for both. The SUBSCRIBE
phase runs first, the heap is frozen as a node does, then the NOTIFY phase runs inside ``map()``
so that callgrind collects only there (``--toggle-collect=map_next``). ``on``: the per-lamp
history hooks attached (needs a tree that has presence/history.py), with its C parts
(presence/_history.c) when they are built; ``on-python``: the same with them left out, as where
``python -m busylamp.presence.node.buildext`` was not run; ``off``: the hooks detached.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, where bench/bisect.py would
# stand for the standard library's bisect: take it off (the repository root goes on instead).
if sys.path and Path(sys.path[0] or ".").resolve() == HERE / "bench":
    del sys.path[0]


def main(tree: str, history: str, presentities: int = 500, keys: int = 4) -> None:
    sys.path.insert(0, str(HERE))
    from bench.tree import use_tree

    use_tree(tree)
    if history == "on-python":  # the history's C extension treated as not built
        sys.modules["busylamp.presence._history"] = None  # type: ignore[assignment]
    from bench.engine import PHONE, _subscribe, _update, ok_for
    from busylamp.presence.engine import EngineConfig, PresenceEngine
    from busylamp.presence.packages import REGISTRY
    from busylamp.presence.packages.base import PackageOptions
    from busylamp.presence.state import PresenceState
    from busylamp.presence.updates import parse_updates

    state = PresenceState(REGISTRY, PackageOptions())
    engine = PresenceEngine(EngineConfig(contacts={"udp": ("192.0.2.1", 5065)}), state, REGISTRY)
    recorder = None
    if history in ("on", "on-python"):
        from busylamp.presence.history import History

        recorder = History()
        recorder.attach(state, engine.counters)
        engine.observer = recorder
    # the engine's batched output: messages_to_send(), datagrams_to_send() in older trees
    drain = getattr(engine, "messages_to_send", None) or engine.datagrams_to_send
    now = 1000.0
    for i in range(presentities * keys):
        engine.receive(_subscribe(i, f"p{i % presentities}"), PHONE, "udp", None, now)
        out = drain()
        engine.receive(ok_for(out[1][2]), PHONE, "udp", None, now)
        drain()
    if recorder is not None:
        recorder.flushed(now)
    gc.collect(1)
    gc.freeze()
    batches = [parse_updates(_update(f"p{p}", name, f"c{cycle}-{p}"))
               for cycle, name in enumerate(("early", "confirmed", "terminated"))
               for p in range(presentities)]

    def notify_phase(_: int) -> None:
        for batch in batches:
            engine.apply(batch, now)
            out = drain()
            if recorder is not None and recorder.pending:
                recorder.flushed(now)
            for _, _, data, _ in out:
                engine.receive(ok_for(data), PHONE, "udp", None, now)
            drain()

    list(map(notify_phase, [0]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "on")
