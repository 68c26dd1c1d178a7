"""emo_stream.client against a real server on 127.0.0.1: an agent's PCM session end to end, barge-in, the
error codes as the engine's exceptions, and nothing left open after."""

from __future__ import annotations

import asyncio
import gc
import time

import numpy as np
import pytest

from emo_stream import errors as e
from emo_stream.audio import load_audio
from emo_stream.client import AudioFrame, AvatarClient, ConnectionFailedError, SessionClosedError, VideoFrame
from emo_stream.client.session import pcm_to_bytes
from tests import media
from tests.servers import free_port, metric, run_server

TTS_RATE = 24_000


@pytest.fixture(scope="module")
def server():
    with run_server(args=["--token", "agent-token"]) as running:
        yield running


def tts_speech(key: str = "weather") -> np.ndarray:
    return load_audio(media.espeak_wav(key), sample_rate=TTS_RATE)


def loud(frames: list[AudioFrame], level: float = 0.05) -> list[float]:
    """Arrival times of the returned voice packets that carry speech."""
    return [f.arrived for f in frames if np.abs(f.mono()).max() > level]


@pytest.fixture(scope="module")
def utterance(server):
    """One agent session: 1 s idle, ~4 s of TTS pushed at once and flushed, then until the voice has ended."""
    tts = tts_speech()

    async def run():
        received: list[VideoFrame | AudioFrame] = []
        events = []
        async with AvatarClient(server.base, token="agent-token") as client:
            async with client.session() as session:
                sessions_live = metric(server.base, "emo_stream_sessions_active")

                async def collect():
                    async for item in session.media():
                        received.append(item)

                async def watch():
                    async for event in session.events():
                        events.append(event)

                tasks = [asyncio.create_task(collect()), asyncio.create_task(watch())]
                await asyncio.sleep(1.0)
                pushed_at = time.monotonic()
                await session.push_pcm(tts, TTS_RATE)
                buffered = await session.flush()
                deadline = time.monotonic() + len(tts) / TTS_RATE + 15
                while time.monotonic() < deadline:  # until the voice has been quiet for a second
                    await asyncio.sleep(0.2)
                    voice = loud([f for f in received if isinstance(f, AudioFrame)])
                    if voice and time.monotonic() - voice[-1] > 1.0:
                        break
                reason_before_close = session.closed_reason
            for task in tasks:  # both end by themselves when the session closes
                await asyncio.wait_for(task, 5)
        return received, events, pushed_at, buffered, sessions_live, reason_before_close, session

    return (*asyncio.run(run()), tts)


def test_a_pcm_session_returns_video_and_the_voice_on_one_clock(utterance):
    received, events, pushed_at, buffered, sessions_live, reason, session, tts = utterance
    video = [f for f in received if isinstance(f, VideoFrame)]
    audio = [f for f in received if isinstance(f, AudioFrame)]
    assert sessions_live == 1 and reason is None
    assert video and audio
    assert video[0].rgb.shape == (256, 256, 3) and video[0].rgb.dtype == np.uint8
    assert audio[0].sample_rate == 48_000 and audio[0].pcm.dtype == np.int16
    span = video[-1].arrived - video[0].arrived
    assert len(video) >= 0.8 * 25 * span, "the video must come at about 25 frames/s"
    media_times = [f.media_time for f in video]
    assert media_times == sorted(media_times)
    voice = loud(audio)
    assert voice, "the returned voice must carry the TTS"
    assert voice[0] > pushed_at
    played = voice[-1] - voice[0]
    source = np.flatnonzero(np.abs(tts) > 0.05)
    assert played == pytest.approx((source[-1] - source[0]) / TTS_RATE, abs=0.6), "played at real time"
    assert 0 < buffered < len(tts) / TTS_RATE + 0.5
    states = [ev.data["state"] for ev in events if ev.type == "state"]
    assert states[0] == "idle" and "speaking" in states
    assert any(ev.type == "stats" for ev in events)
    assert session.dropped == {"video": 0, "audio": 0, "events": 0}


def test_closing_a_session_ends_it_on_the_server_and_leaves_no_task(utterance, server):
    *_, session, _ = utterance
    assert session.closed and session.closed_reason == "closed by the client"
    for _ in range(50):
        if metric(server.base, "emo_stream_sessions_active") == 0:
            break
        time.sleep(0.1)
    assert metric(server.base, "emo_stream_sessions_active") == 0
    gc.collect()


def test_interrupt_drops_the_queued_voice(server):
    tts = tts_speech("story")

    async def run():
        async with AvatarClient(server.base, token="agent-token") as client, client.session() as session:
            await session.push_pcm(tts, TTS_RATE)
            await session.flush()
            async for frame in session.audio():  # until the voice comes back
                if np.abs(frame.mono()).max() > 0.05:
                    break
            await asyncio.sleep(1.0)
            await session.interrupt()
            interrupted = time.monotonic()
            after = []

            async def collect():
                async for frame in session.audio():
                    after.append(frame)

            task = asyncio.create_task(collect())
            await asyncio.sleep(1.5)
            task.cancel()
            return interrupted, after

    interrupted, after = asyncio.run(run())
    assert after, "the voice track goes on (silence) after an interrupt"
    late_speech = [t - interrupted for t in loud(after) if t - interrupted > 0.08]
    assert not late_speech, f"speech {late_speech[:3]} s after the interrupt (2 ticks is 0.08 s)"


def test_server_errors_arrive_as_the_engines_exceptions(server):
    async def run():
        async with AvatarClient(server.base, token="agent-token") as client:
            with pytest.raises(e.AvatarNotFoundError) as missing:
                async with client.session(avatar="no-such-portrait"):
                    pass
            assert missing.value.status == 404 and missing.value.request_id
            with pytest.raises(e.ConfigError):
                async with client.session(background="#12345"):
                    pass
            with pytest.raises(e.NotAnImageError):
                await client.upload_avatar(b"this is not a picture")
            with pytest.raises(e.InputNotFoundError):
                await client.upload_avatar("/no/such/photo.jpg")
            async with client.session() as session:
                with pytest.raises(e.RequestError):
                    await session.push_pcm(b"\x00\x01\x02", 16_000)  # half a sample: refused here
                with pytest.raises(e.RequestError):
                    await session.push_pcm(np.zeros(100, np.int16), 3)  # a rate the server refuses
                await session.push_pcm(np.zeros(1600, np.float32), 16_000)  # the session still takes audio
                await session.flush()
            with pytest.raises(SessionClosedError):
                await session.push_pcm(np.zeros(100, np.int16), 16_000)
        async with AvatarClient(server.base, token="wrong") as client:
            with pytest.raises(e.UnauthorizedError):
                await client.avatars()
        async with AvatarClient(f"http://127.0.0.1:{free_port()}") as client:
            with pytest.raises(ConnectionFailedError):
                await client.avatars()
            assert not await client.health()

    asyncio.run(run())


def test_upload_avatar_and_animate_it(server):
    photo = media.save_png(media.grace_hopper(), "client-hopper.png")

    async def run():
        async with AvatarClient(server.base, token="agent-token") as client:
            avatar = await client.upload_avatar(photo, name="hopper")
            listed = [a.id for a in await client.avatars()]
            async with client.session(avatar=avatar) as session:
                frame = await anext(session.video())
            return avatar, listed, frame

    avatar, listed, frame = asyncio.run(run())
    assert avatar.faces >= 1 and avatar.name == "hopper" and avatar.id in listed
    assert frame.rgb.shape == (256, 256, 3)


def test_pcm_to_bytes_takes_floats_int16_and_bytes():
    floats = np.array([0.0, 0.5, -1.0, 2.0], np.float32)
    assert np.frombuffer(pcm_to_bytes(floats, 1), "<i2").tolist() == [0, 16383, -32767, 32767]
    stereo = np.array([[1, 2], [3, 4]], np.int16)
    assert np.frombuffer(pcm_to_bytes(stereo, 2), "<i2").tolist() == [1, 2, 3, 4]
    assert pcm_to_bytes(b"\x01\x00\x02\x00", 2) == b"\x01\x00\x02\x00"
    for bad, channels in ((b"\x01\x00\x02", 1), (stereo, 1), (np.zeros(4, np.int32), 1), (b"\x00" * 6, 2)):
        with pytest.raises(e.RequestError):
            pcm_to_bytes(bad, channels)
