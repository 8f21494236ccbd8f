"""The inference service: streams each assigned request's completion from its variant's backend."""
