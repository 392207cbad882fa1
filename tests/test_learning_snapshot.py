"""Signed snapshots: round trip, and nothing unverified is ever unpickled."""

from __future__ import annotations

import pickle
import struct

import pytest

from app.learning import snapshot
from app.learning.model import MomentModel
from app.learning.snapshot import (
    InvalidSnapshotKey,
    UnreadableSnapshot,
    UntrustedSnapshot,
    dumps,
    loads,
    version_of,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


class Bomb:
    """Unpickling it would run code: proof that unverified bytes are never unpickled."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (pytest.fail, ("unpickled an unverified snapshot",))


def trained_model() -> MomentModel:
    model = MomentModel()
    for i in range(100):
        model.learn_one({"views": float(i % 7), "cart": float(i % 2)}, i % 7 > 3)
    return model


def test_a_model_round_trips() -> None:
    model = trained_model()
    restored, version = loads(dumps(model, KEY, version=12), KEY)
    assert version == 12
    assert isinstance(restored, MomentModel)
    probe = {"views": 5.0, "cart": 1.0}
    assert restored.predict_proba_one(probe)[True] == model.predict_proba_one(probe)[True]
    assert (restored.examples_seen, restored.auc, restored.log_loss) == (
        model.examples_seen,
        model.auc,
        model.log_loss,
    )


def test_the_layout() -> None:
    blob = dumps([1, 2], KEY, version=2**64 - 1)
    assert blob[:4] == b"MMSN"
    assert blob[4] == snapshot.FORMAT
    assert struct.unpack(">Q", blob[5:13]) == (2**64 - 1,)
    assert pickle.loads(blob[45:]) == [1, 2]
    assert version_of(blob) == 2**64 - 1
    assert dumps([1, 2], KEY, version=3) == dumps([1, 2], KEY, version=3)  # deterministic


@pytest.mark.parametrize("position", [0, 4, 5, 12, 13, 44, 45, -1])
def test_a_tampered_byte_is_refused(position: int) -> None:
    blob = bytearray(dumps(trained_model(), KEY, version=1))
    blob[position] ^= 0x01
    with pytest.raises(UntrustedSnapshot):
        loads(bytes(blob), KEY)


def test_a_changed_version_is_refused() -> None:
    blob = dumps({"a": 1}, KEY, version=1)
    forged = blob[:5] + struct.pack(">Q", 2) + blob[13:]
    with pytest.raises(UntrustedSnapshot, match="does not verify"):
        loads(forged, KEY)


def test_the_wrong_key_is_refused() -> None:
    with pytest.raises(UntrustedSnapshot, match="signed with another key, or altered"):
        loads(dumps({"a": 1}, KEY, version=1), OTHER_KEY)


@pytest.mark.parametrize("length", [0, 1, 13, 44, 45, 60])
def test_a_truncated_snapshot_is_refused(length: int) -> None:
    blob = dumps(trained_model(), KEY, version=1)
    with pytest.raises(UntrustedSnapshot):
        loads(blob[:length], KEY)


def test_appended_bytes_are_refused() -> None:
    with pytest.raises(UntrustedSnapshot):
        loads(dumps({"a": 1}, KEY, version=1) + b"\x00", KEY)


def test_a_plain_pickle_is_never_unpickled() -> None:
    with pytest.raises(UntrustedSnapshot, match="wrong magic"):
        loads(pickle.dumps(Bomb()) + bytes(64), KEY)


def test_unverified_bytes_are_never_unpickled() -> None:
    """A forged payload behind a genuine header: refused before unpickling."""
    genuine = dumps({"a": 1}, KEY, version=1)
    forged = genuine[:45] + pickle.dumps(Bomb())
    with pytest.raises(UntrustedSnapshot):
        loads(forged, KEY)
    # The same payload signed with another key: refused too.
    with pytest.raises(UntrustedSnapshot):
        loads(dumps(Bomb(), OTHER_KEY, version=1), KEY)


def test_another_format_is_refused() -> None:
    blob = bytearray(dumps({"a": 1}, KEY, version=1))
    blob[4] = 2
    with pytest.raises(UntrustedSnapshot, match="unsupported snapshot format 2"):
        loads(bytes(blob), KEY)
    assert version_of(bytes(blob)) is None


def test_the_context_binds_a_snapshot_to_its_use() -> None:
    blob = dumps({"a": 1}, KEY, version=1, context=b"price_comparison")
    assert loads(blob, KEY, context=b"price_comparison") == ({"a": 1}, 1)
    with pytest.raises(UntrustedSnapshot):
        loads(blob, KEY, context=b"review_seeking")
    with pytest.raises(UntrustedSnapshot):
        loads(blob, KEY)


@pytest.mark.parametrize("key", [b"", b"short", bytes(31)])
def test_an_empty_or_short_key_is_a_configuration_error(key: bytes) -> None:
    with pytest.raises(InvalidSnapshotKey, match="at least 32 bytes"):
        dumps({}, key, version=1)
    with pytest.raises(InvalidSnapshotKey):
        loads(dumps({}, KEY, version=1), key)
    assert issubclass(InvalidSnapshotKey, ValueError)


def test_a_key_must_be_bytes() -> None:
    with pytest.raises(InvalidSnapshotKey, match="must be bytes"):
        dumps({}, "k" * 32, version=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [-1, 2**64])
def test_the_version_must_fit(version: int) -> None:
    with pytest.raises(ValueError, match="version"):
        dumps({}, KEY, version=version)


def test_an_authentic_snapshot_that_does_not_unpickle_says_so() -> None:
    header = struct.pack(">4sBQ", b"MMSN", snapshot.FORMAT, 5)
    payload = b"\x80\x05cno_such_module\nThing\n."
    blob = header + snapshot._tag(KEY, header, b"", payload) + payload
    with pytest.raises(UnreadableSnapshot, match="version 5 verified but does not unpickle"):
        loads(blob, KEY)
