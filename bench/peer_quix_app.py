"""The peer of bench/peer_quix.py: the detection job as a Quix Streams application.

Written the way Quix Streams' documentation suggests: the input topics (keyed by
customer) concatenated into one StreamingDataFrame, a stateful ``apply`` keeping each
customer's window in Quix's RocksDB state (with its changelog topic, the default),
``expand`` to emit each trigger, ``to_topic`` to publish them. The rules and the
engagement policy (consent, frequency cap, hold-outs) are this project's own core, so
both contenders do the same work per event; the differences are the framework around
it and where state lives. Quix Streams has no per-key event-time timers, so what
only time passing brings about does not happen here: cart abandonment (an absence)
never fires, and triggers deferred by quiet hours are never released. The trigger
counts of the two differ by those.

Runs in a virtual environment of its own (bench/peer_quix.py makes it), configured by
the environment:

    PEER_BOOTSTRAP, PEER_GROUP, PEER_INPUTS (comma-separated), PEER_OUTPUT,
    PEER_STATE_DIR, MM_MOMENTS_CONFIG (the moments' configuration, rules only)
"""

from __future__ import annotations

import os
from pathlib import Path

from quixstreams import Application, State
from quixstreams.state.rocksdb import RocksDBOptions

from app.config import load_catalogue
from app.decoding import Rejection, decode_event
from app.detector import Detector
from app.policy import Policy, Verdict
from app.state.codec import decode_state, encode_state
from app.triggers import encode, to_cloudevent
from app.window import CustomerState

catalogue = load_catalogue(Path(os.environ["MM_MOMENTS_CONFIG"]))
detector = Detector(catalogue)
policy = Policy(catalogue.policy)
source = catalogue.trigger.source


def detect(value: bytes, state: State) -> list[bytes]:
    """One event: the customer's window from state, the rules, the window back, the triggers out."""
    event = decode_event(value)
    if isinstance(event, Rejection):
        return []
    blob = state.get("customer")
    customer = decode_state(blob) if blob else CustomerState(customer_id=event.customer_id)
    observation = detector.observe(customer, event, event.ts)
    published = [
        encode(to_cloudevent(detection, source=source))
        for detection in observation.detections
        if policy.judge(detection, customer).verdict is Verdict.PUBLISH
    ]
    state.set("customer", encode_state(customer))
    return published


def _as_bytes(value: bytes | str) -> bytes:
    """State values are the codec's bytes; keys (and prefixes) are strings."""
    return value if isinstance(value, bytes) else value.encode()


def main() -> None:
    app = Application(
        broker_address=os.environ["PEER_BOOTSTRAP"],
        consumer_group=os.environ["PEER_GROUP"],
        auto_offset_reset="earliest",
        # Commits as often as the micromoments worker's batches do, so that the bench,
        # which watches committed offsets, sees the end when it happens.
        commit_interval=0.5,
        state_dir=os.environ["PEER_STATE_DIR"],
        # The window is already bytes (this project's state codec): stored as it is.
        rocksdb_options=RocksDBOptions(dumps=_as_bytes, loads=lambda value: value),
        loglevel="WARNING",
    )
    inputs = [
        app.topic(name, key_deserializer="bytes", value_deserializer="bytes")
        for name in os.environ["PEER_INPUTS"].split(",")
    ]
    output = app.topic(os.environ["PEER_OUTPUT"], key_serializer="bytes", value_serializer="bytes")
    sdf = app.dataframe(inputs[0])
    for topic in inputs[1:]:
        sdf = sdf.concat(app.dataframe(topic))
    sdf = sdf.apply(detect, stateful=True, expand=True)
    sdf.to_topic(output)
    app.run()


if __name__ == "__main__":
    main()
