"""Wire protocol between the router (gateway side) and an instance.

Each frame is a 4-byte big-endian length followed by one msgpack-encoded message (msgspec,
tagged union). One connection carries many requests in flight, told apart by ``id``.

router -> instance: Invoke, Cancel
instance -> router: Ready (once, after setup), SetupFailed, Chunk* then End (streams),
                    Result or Error (one answer per Invoke)

Every answer carries CallStats so metering can bill what really ran.
"""

from __future__ import annotations

import struct

import msgspec

HEADER = struct.Struct(">I")
MAX_FRAME = 512 * 1024 * 1024  # a frame larger than this is a protocol error, not a payload


class Frame(msgspec.Struct, frozen=True, tag_field="kind"):
    """Base of every message; ``kind`` on the wire tells them apart."""


class CallStats(msgspec.Struct, frozen=True):
    duration_ms: float  # wall time inside the instance, from receipt to answer
    cpu_ms: float  # CPU time the call used
    peak_rss_kb: int  # the instance's peak resident memory so far
    batch_size: int = 0  # how many requests shared the call (batched functions); 0: not batched
    models: tuple[str, ...] = ()  # multiplexed functions: the models the instance holds, LRU first


class Invoke(Frame, tag="invoke", frozen=True):
    id: int
    activation: str
    deadline: float  # epoch seconds; the instance answers Error(type="Timeout") past it
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = {}
    # For style "lambda-http": the request line the handler's event needs.
    method: str = "POST"
    path: str = "/"
    query: str = ""
    # A request that came by an HTTP route (tidal.routing): its parameters and `GET /items/{id}`.
    path_params: dict[str, str] = {}
    route_key: str = ""
    # Seconds left when the router sent it (0: unknown). The instance takes its deadline from this
    # and its own clock, so a node whose clock differs from the gateway's (Ray) times calls right.
    remaining_s: float = 0.0


class Cancel(Frame, tag="cancel", frozen=True):
    id: int


class Ready(Frame, tag="ready", frozen=True):
    pid: int
    setup_ms: float  # time spent in the user's setup (model load)
    import_ms: float  # time spent importing the user's module


class SetupFailed(Frame, tag="setup_failed", frozen=True):
    type: str
    message: str


class Result(Frame, tag="result", frozen=True):
    id: int
    body: bytes
    stats: CallStats
    content_type: str = "application/json"
    status: int = 200
    headers: dict[str, str] = {}
    logs: str = ""


class Chunk(Frame, tag="chunk", frozen=True):
    id: int
    data: bytes


class End(Frame, tag="end", frozen=True):
    id: int
    stats: CallStats
    logs: str = ""
    error_type: str = ""  # set when the generator raised after it had streamed chunks
    error_message: str = ""


class Error(Frame, tag="error", frozen=True):
    id: int
    type: str  # the exception's class name, or "Timeout" / "Cancelled" / "BadRequest"
    message: str
    stats: CallStats
    logs: str = ""
    # The call's thread is still running after its deadline (Python cannot stop a thread): the
    # instance asks to be drained and replaced, the way Lambda discards a timed-out environment.
    recycle: bool = False
    # The caller sent unusable input (the function raised tidal.InputError, or the JSON body was
    # malformed): a 4xx for the client, not a crash of the function; no traceback is logged.
    caller_fault: bool = False
    # Typed inputs: pydantic's error list as JSON text, when the body did not fit the function's
    # input type (tidal.runtime.typed_input); the client sees it as ``error.errors``.
    errors: str = ""


Message = Invoke | Cancel | Ready | SetupFailed | Result | Chunk | End | Error

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    """One frame: length prefix + payload, ready for a single write."""
    payload = _encoder.encode(message)
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes) -> Message:
    return _decoder.decode(payload)


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


class FrameReader:
    """Incremental frame splitter for a byte stream (works with any read() chunking)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            try:
                messages.append(_decoder.decode(bytes(self._buffer[HEADER.size : end])))
            except msgspec.DecodeError as exc:
                raise ProtocolError(str(exc)) from exc
            del self._buffer[:end]
        return messages
