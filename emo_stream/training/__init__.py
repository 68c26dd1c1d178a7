"""Training and distillation of the EMO model: data preparation, the two training stages, few-step distillation.

Modules (one job each):
    sample      the typed training sample and batch every stage consumes (the contract between data and trainers)
    shards      the on-disk shard format and manifest written by ``emo-stream data prepare``
    prepare     video → face track → 25 fps crops, 16 kHz audio, features, masks, head speed → shards
    dataset     deterministic, memory-bounded sampling of training samples from shards
    synthetic   moving-blob clips with matching audio, same API as ``dataset`` (smoke runs, tests)
    loader      resumable, per-step deterministic batches of a dataset (sharded across DDP processes)
    train_config  typed configs of ``emo-stream train`` / ``distill`` (errors name the dotted key)
    device      device, precision (bf16/fp16 autocast, GradScaler) and DDP under torchrun
    stages      what each stage trains and its v-prediction loss (the pipeline's inference math)
    grad_checkpoint  gradient checkpointing of the UNet blocks (reference processors' state restored)
    ema         exponential moving average of the trained parameters
    run_log     CSV logs (TensorBoard too when importable)
    samples     sample renders: a few frames sampled with the pipeline, as a PNG strip
    autoencoder the VAE stage of a model trained from scratch (before stage 1; ``make train-tiny``)
    trainer     EMO stage 1 (image) and stage 2 (video) optimisation loops, EMA, checkpoints, logs
    distill     few-step distillation of the denoiser and training of the small streaming decoder
"""
