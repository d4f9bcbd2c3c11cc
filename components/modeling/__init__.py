"""Models: which one (``resolve``), loading and saving it with its dtype, device, prompt and
gradient checkpointing (``io``), how records become tokens and chat prompts (``encoding``),
scoring (``scoring``), fine-tuning (``finetune``), the embedded demo models (``demo``,
``tokenizer``, ``tiny_model``) and fetching the offline real model SmolLM2 (``fetch``)."""
