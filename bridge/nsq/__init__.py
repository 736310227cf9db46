"""NSQ transport for the bus: pynsq (tornado) driven from gevent.

- loop.py: :class:`NsqLoop`, the one tornado loop of the process, in one greenlet;
- publisher.py: :class:`NsqPublisher`, ordered, bounded, non-blocking MPUB to one topic;
- consumer.py: :class:`NsqConsumer`, one topic/channel decoded to dicts;
- bus.py: :class:`NsqBus`, updates and control messages (busylamp.wire.control_topic) over NSQ.

No greenlet waits for work done in the loop: publishers and consumers are created there on first
use (``start`` only schedules it), so any greenlet may publish first. pynsq itself is reached
through ``bridge/pynsq_adapter.py`` only.
"""

from busylamp.bridge.nsq.bus import NsqBus
from busylamp.bridge.nsq.consumer import NsqConsumer
from busylamp.bridge.nsq.loop import NsqLoop
from busylamp.bridge.nsq.publisher import MAX_MSG_SIZE, NsqPublisher

__all__ = ["MAX_MSG_SIZE", "NsqBus", "NsqConsumer", "NsqLoop", "NsqPublisher"]
