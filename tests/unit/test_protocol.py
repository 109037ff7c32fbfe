import pytest

from tidal.runtime.protocol import (
    HEADER,
    CallStats,
    Chunk,
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
