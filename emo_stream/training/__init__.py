"""Training and distillation of the EMO model: data preparation, the two training stages, few-step distillation.

Modules (one job each):
    sample      the typed training sample and batch every stage consumes (the contract between data and trainers)
    shards      the on-disk shard format and manifest written by ``emo-stream data prepare``
    prepare     video → face track → 25 fps crops, 16 kHz audio, features, masks, head speed → shards
    dataset     deterministic, memory-bounded sampling of training samples from shards
    trainer     EMO stage 1 (image) and stage 2 (video) optimisation loops, EMA, checkpoints, logs
    distill     few-step distillation of the denoiser and training of the small streaming decoder
"""
