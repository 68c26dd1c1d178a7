"""Diffusion pipelines (imports torch and diffusers: only the ``emo`` backend uses this)."""

from emo_stream.pipelines.pipeline_emo import EmoPipeline, EmoPipelineOutput, MotionCarry, PortraitState

__all__ = ["EmoPipeline", "EmoPipelineOutput", "MotionCarry", "PortraitState"]
