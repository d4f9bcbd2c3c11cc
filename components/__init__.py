"""The library behind the pipeline, one package per step of the flow of data (data, validation,
modeling, unlearning, evaluation, registry) and ``stages``, one module per pipeline stage.
Nothing here imports Prefect, the CLI or ``flows``."""
