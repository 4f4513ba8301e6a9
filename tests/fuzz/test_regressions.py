"""Inputs the fuzz targets found crashing, kept as plain tests (they run in `make test`)."""

from __future__ import annotations

import pytest

from webcall.protocol import rest


@pytest.mark.parametrize("event_type", [[1], {"a": 1}, [], {}])
def test_stream_event_type_of_an_unhashable_json_value_is_a_400(event_type) -> None:
    # Found by test_rest_bodies_raise_only_rest_error: `value not in frozenset` raised TypeError (a 500).
    with pytest.raises(rest.RestError) as exc:
        rest.parse_stream_event({"streamName": "cam", "type": event_type, "payload": {}})
    assert exc.value.status == 400 and exc.value.message.startswith("type must be one of")
