"""The production side: the Prefect flow over the inbox (``pipeline``), its plain helpers
(``batch``: one request's check, the batch's models, certificates and retention), the torchrun
launcher (``launch``), the served deployment (``serve``) and the ``blur`` command line (``cli``)."""
