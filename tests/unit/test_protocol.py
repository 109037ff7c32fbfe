import msgspec
import pytest

from tidal.runtime.protocol import (
    HEADER,
    CallStats,
    Chunk,
    Error,
    FrameReader,
    Invoke,
    ProtocolError,
    Result,
    decode,
    encode,
)


def test_frames_survive_any_chunking() -> None:
    messages = [
        Invoke(1, "act", 123.5, b'{"a": 1}', headers={"x": "y"}),
        Chunk(1, b"part"),
        Result(1, b"{}", CallStats(1.5, 0.5, 2048), logs="hi\n"),
    ]
    stream = b"".join(encode(message) for message in messages)
    for step in (1, 3, 7, len(stream)):
        reader = FrameReader()
        received = []
        for start in range(0, len(stream), step):
            received += reader.feed(stream[start : start + step])
        assert received == messages


def test_single_frame_round_trip() -> None:
    frame = encode(Chunk(9, b"\x00\xff"))
    assert decode(frame[HEADER.size :]) == Chunk(9, b"\x00\xff")


def test_garbage_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        FrameReader().feed(HEADER.pack(3) + b"\xc1\xc1\xc1")
    with pytest.raises(ProtocolError):
        FrameReader().feed(HEADER.pack(2**31))


def test_error_frames_say_whether_the_caller_was_at_fault() -> None:
    stats = CallStats(1.0, 0.5, 1024)
    crash = Error(1, "KeyError", "'x'", stats)
    refused = Error(2, "InputError", "pixels must be 64 numbers", stats, caller_fault=True)
    assert crash.caller_fault is False  # the default: a crash is the function's fault
    reader = FrameReader()
    assert reader.feed(encode(crash) + encode(refused)) == [crash, refused]


def test_an_error_frame_without_caller_fault_still_decodes() -> None:
    """An instance of an older release sends no caller_fault: it reads as False."""
    older = msgspec.msgpack.encode(
        {
            "kind": "error",
            "id": 3,
            "type": "ValueError",
            "message": "no",
            "stats": {"duration_ms": 1.0, "cpu_ms": 0.0, "peak_rss_kb": 1},
        }
    )
    decoded = decode(older)
    assert isinstance(decoded, Error) and decoded.caller_fault is False
