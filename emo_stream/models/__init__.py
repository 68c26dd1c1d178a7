"""EMO diffusion models in diffusers style (imports torch and diffusers: only the ``emo`` backend uses this).

Public API:
    EmoDenoiser, ReferenceNet, ReferenceBank   the video UNet, the portrait UNet and its cached features
    FaceLocator, AudioProjection, ImageProjection, SpeechEncoder, SmallDecoder
    make_scheduler                              DDIM (v-pred, zero-SNR, trailing) / LCM / TCD
    EmoComponents, InferenceSettings, load_checkpoint, save_checkpoint
    build_components, tiny_components           random models from named configs (``configs``)
"""

from emo_stream.models.audio_projection import AudioProjection, AudioProjectionOutput
from emo_stream.models.checkpoint import EmoComponents, InferenceSettings, load_checkpoint, save_checkpoint
from emo_stream.models.denoiser import EmoDenoiser, EmoDenoiserOutput, speed_to_buckets
from emo_stream.models.face_locator import FaceLocator, FaceLocatorOutput
from emo_stream.models.factory import build_components, liven_zero_init, tiny_components
from emo_stream.models.image_projection import ImageProjection, ImageProjectionOutput
from emo_stream.models.reference_net import ReferenceBank, ReferenceNet, ReferenceNetOutput
from emo_stream.models.schedulers import make_scheduler
from emo_stream.models.small_decoder import SmallDecoder, SmallDecoderOutput
from emo_stream.models.speech_encoder import SpeechEncoder, SpeechEncoderOutput

__all__ = [
    "AudioProjection",
    "AudioProjectionOutput",
    "EmoComponents",
    "EmoDenoiser",
    "EmoDenoiserOutput",
    "FaceLocator",
    "FaceLocatorOutput",
    "ImageProjection",
    "ImageProjectionOutput",
    "InferenceSettings",
    "ReferenceBank",
    "ReferenceNet",
    "ReferenceNetOutput",
    "SmallDecoder",
    "SmallDecoderOutput",
    "SpeechEncoder",
    "SpeechEncoderOutput",
    "build_components",
    "liven_zero_init",
    "load_checkpoint",
    "make_scheduler",
    "save_checkpoint",
    "speed_to_buckets",
    "tiny_components",
]
