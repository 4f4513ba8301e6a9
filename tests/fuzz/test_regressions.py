"""Inputs the fuzz targets found crashing, kept as plain tests (they run in `make test`)."""

from __future__ import annotations

import pytest

from webcall.media.rtp import parse_extensions, split
from webcall.wcs import rest


@pytest.mark.parametrize("event_type", [[1], {"a": 1}, [], {}])
def test_stream_event_type_of_an_unhashable_json_value_is_a_400(event_type) -> None:
    # Found by test_rest_bodies_raise_only_rest_error: `value not in frozenset` raised TypeError (a 500).
    with pytest.raises(rest.RestError) as exc:
        rest.parse_stream_event({"streamName": "cam", "type": event_type, "payload": {}})
    assert exc.value.status == 400 and exc.value.message.startswith("type must be one of")


def test_one_byte_extension_with_id_0_and_a_length_is_not_forwarded() -> None:
    # Found by test_rtp_split_and_extensions: byte 0x11 -> 0x01 gives an id-0 element of 2 bytes.
    packet = bytes.fromhex("90e01092") + bytes.fromhex("00015f90112233 44".replace(" ", "")) + \
        bytes.fromhex("bede0002 01ab2201 02030000".replace(" ", "")) + b"\x90\x80\x12"
    csrc_end, ext_end, _ = split(packet)
    elements = parse_extensions(packet, csrc_end, ext_end)
    assert elements[0][0] == 0
    from webcall.media.rtp import ExtensionPlan
    assert ExtensionPlan({1: 3, 2: 4}, None).build(elements) == ExtensionPlan({1: 3, 2: 4}, None).build(
        [e for e in elements if e[0] != 0])
