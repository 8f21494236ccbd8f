"""The ingress service: the HTTP and WebSocket API, and the projector that keeps each request's status record."""
