"""`sluice model demo`: the optimization loop run once, from the task dataset to an A/B test on the live stack and its cost.

It drives the pipeline in `services/modelops` and the running stack through
its HTTP API, as an operator would, so it lives with the CLI.
"""
