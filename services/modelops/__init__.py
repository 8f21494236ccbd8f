"""Offline jobs that build the models the platform serves: `python -m services.modelops.pretrain`."""
