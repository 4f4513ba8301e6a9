"""The SDP answer an MSE or WSPlayer player gets (spec §11): only the rejected m-lines matter to the SDK.

The SDK's MSE provider marks a kind as absent when its m-line in the answer has port 0 (`isRejected`), and
then waits for nothing of that kind; WSPlayer ignores the answer. So the answer is the offer's m-lines with
port 9 for a kind we send and port 0 for one we do not.
"""

from __future__ import annotations


def feed_answer(offer: str, has_video: bool, has_audio: bool) -> str:
    lines = ["v=0", "o=- 0 0 IN IP4 0.0.0.0", "s=-", "c=IN IP4 0.0.0.0", "t=0 0"]
    for line in offer.replace("\r\n", "\n").split("\n"):
        line = line.strip()
        if line.startswith("m="):
            parts = line[2:].split(" ")
            kind = parts[0]
            send = has_video if kind == "video" else has_audio if kind == "audio" else False
            parts[1] = "9" if send else "0"
            lines.append("m=" + " ".join(parts))
        elif line.startswith(("a=rtpmap:", "a=fmtp:")):
            lines.append(line)
        elif line in ("a=recvonly", "a=sendrecv"):
            lines.append("a=sendonly")
    return "\r\n".join(lines) + "\r\n"
