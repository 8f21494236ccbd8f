"""A TGI-compatible HTTP server that runs one transformers causal LM on the CPU: `python -m services.model_server`."""
