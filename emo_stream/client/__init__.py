"""An async Python client for an emo-stream server: portraits, live sessions, synchronised frames.

    async with AvatarClient("http://127.0.0.1:8080") as client:
        async with client.session(audio_source="pcm") as session:
            await session.push_pcm(pcm16, sample_rate=24000)
            await session.flush()
            async for item in session.media():  # VideoFrame | AudioFrame, on one clock
                ...

docs/integrations.md has the whole story, with the pipecat service and the LiveKit avatar shape built on it.
"""

from emo_stream.client.api import Avatar, AvatarClient
from emo_stream.client.errors import ConnectionFailedError, ServerError, SessionClosedError, UnavailableError
from emo_stream.client.frames import AudioFrame, SessionEvent, VideoFrame
from emo_stream.client.session import AvatarSession

__all__ = ["AudioFrame", "Avatar", "AvatarClient", "AvatarSession", "ConnectionFailedError", "ServerError",
           "SessionClosedError", "SessionEvent", "UnavailableError", "VideoFrame"]
