"""What crosses the control ↔ worker channel besides ids: negotiated tracks, as plain JSON values.

The channel carries JSON only (channel.py), so the few structured values the media plane needs — the
negotiated offer, the tracks of a relayed stream, a fan-out cost histogram — are turned into lists and dicts
here and back, and nowhere else.
"""

from __future__ import annotations

from typing import Any

from ..media.stats import FanoutCost
from ..protocol.sdp import Codec, MLine, Negotiation, Track


def codec_to_wire(codec: Codec) -> dict[str, Any]:
    return {"name": codec.name, "pt": codec.payload_type, "rate": codec.clock_rate, "channels": codec.channels,
            "fmtp": codec.fmtp, "fb": list(codec.rtcp_fb), "rtx": codec.rtx_payload_type}


def codec_from_wire(d: dict[str, Any]) -> Codec:
    return Codec(d["name"], d["pt"], d["rate"], d["channels"], d["fmtp"], tuple(d["fb"]), d["rtx"])


def track_to_wire(track: Track) -> dict[str, Any]:
    return {"mid": track.mid, "kind": track.kind, "codec": codec_to_wire(track.codec), "ext": track.extensions,
            "ssrc": track.ssrc, "rtx_ssrc": track.rtx_ssrc}


def track_from_wire(d: dict[str, Any]) -> Track:
    return Track(d["mid"], d["kind"], codec_from_wire(d["codec"]), dict(d["ext"]), d["ssrc"], d["rtx_ssrc"])


def negotiation_to_wire(neg: Negotiation) -> dict[str, Any]:
    return {
        "ufrag": neg.ice_ufrag, "pwd": neg.ice_pwd, "fingerprints": [list(f) for f in neg.fingerprints],
        "mlines": [{"mid": m.mid, "kind": m.kind, "profile": m.profile, "formats": m.formats,
                    "track": track_to_wire(m.track) if m.track else None, "rsize": m.rtcp_rsize} for m in neg.mlines],
    }


def negotiation_from_wire(d: dict[str, Any]) -> Negotiation:
    return Negotiation(
        d["ufrag"], d["pwd"], [(a, v) for a, v in d["fingerprints"]],
        [MLine(m["mid"], m["kind"], m["profile"], list(m["formats"]),
               track_from_wire(m["track"]) if m["track"] else None, m["rsize"]) for m in d["mlines"]],
    )


def fanout_cost_to_wire(cost: FanoutCost) -> list[Any]:
    return [cost.counts, cost.sum_ns, cost.samples, cost.players, cost.cpu_ns]


def fanout_cost_add(total: FanoutCost, wire: list[Any]) -> None:
    """Add one worker's histogram (as sent) into `total`."""
    counts, sum_ns, samples, players, cpu_ns = wire
    for i, count in enumerate(counts):
        total.counts[i] += count
    total.sum_ns += sum_ns
    total.cpu_ns += cpu_ns
    total.samples += samples
    total.players += players
