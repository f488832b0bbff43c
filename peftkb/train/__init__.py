"""`peftkb train`: a reference implementation trained on your model and your data file.

    data.py     rows from JSONL / CSV, checked at one boundary; split, tokens, batches
    models.py   a local Hugging Face folder or a bundled model, loaded with no network
    outdir.py   the output folder: what it may hold, atomic writes
    loop.py     the training loop, one process or many under accelerate (DDP, FSDP2); load() and merging

`python -m peftkb.train ARGS` is `peftkb train ARGS`; it is what `accelerate launch -m peftkb.train` runs
in every process. Importing this package imports no torch.
"""
