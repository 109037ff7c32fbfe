"""One invocation's captured output is capped at 64 KiB: the head is kept, the rest counted."""

from __future__ import annotations

from tidal.runtime.capture import MAX_LOG_BYTES, LogBuffer, cap_logs

MARKER = "\n[tidal: {} more bytes of output dropped]"


def test_a_huge_print_keeps_its_first_64_kib_and_says_how_much_went() -> None:
    buffer = LogBuffer()
    buffer.write("start\n")
    buffer.write("x" * 10_000_000)
    buffer.write("never seen\n")

    logs = buffer.getvalue()
    kept = MAX_LOG_BYTES - 64  # 64 bytes stay free for the marker
    assert logs == "start\n" + "x" * (kept - 6) + MARKER.format(6 + 10_000_000 + 11 - kept)
    assert logs.endswith("\n[tidal: 9934545 more bytes of output dropped]")
    assert len(logs.encode()) <= MAX_LOG_BYTES


def test_output_under_the_cap_is_untouched() -> None:
    buffer = LogBuffer()
    for line in range(1000):
        buffer.write(f"line {line}\n")
    assert buffer.getvalue() == "".join(f"line {line}\n" for line in range(1000))
    assert cap_logs(buffer.getvalue()) == buffer.getvalue()


def test_multibyte_text_is_cut_between_characters() -> None:
    logs = cap_logs("é" * 40_000)  # 80,000 bytes of UTF-8
    head, _, marker = logs.partition("\n[tidal: ")
    assert set(head) == {"é"} and len(head.encode()) <= MAX_LOG_BYTES - 64
    assert marker == f"{80_000 - len(head.encode())} more bytes of output dropped]"
    assert len(logs.encode()) <= MAX_LOG_BYTES


def test_the_gateway_cap_leaves_an_instances_capped_logs_as_they_are() -> None:
    buffer = LogBuffer()
    buffer.write("y" * 1_000_000)
    assert cap_logs(buffer.getvalue()) == buffer.getvalue()  # no second marker
