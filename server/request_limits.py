"""How much of a request the server reads, shared by the session processes and the router in front of them
(which must refuse what a child would refuse before buffering it)."""

from __future__ import annotations

from starlette.requests import Request

from emo_stream.errors import RequestTooLargeError

MAX_OFFER_BYTES = 128 * 1024  # an SDP offer: a browser's is 2-10 KB
# An offer's body: the SDP in JSON with a few options.
MAX_OFFER_BODY_BYTES = MAX_OFFER_BYTES + 16 * 1024
# An upload's Content-Length may exceed the image limit by this much (the multipart framing and its fields).
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Set by the router on an offer it forwards while the server is full: the child checks it, then refuses (503).
FULL_HEADER = "x-emo-stream-full"


async def read_limited(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) before more than ``limit`` bytes are buffered.

    Raises:
        RequestTooLargeError: the Content-Length or the body itself is over ``limit``.
    """
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise RequestTooLargeError(f"the body is {int(length) // 1024} KiB; this route takes at most "
                                   f"{limit // 1024} KiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"the body is over {limit // 1024} KiB, the most this route takes")
        chunks.append(chunk)
    return b"".join(chunks)
