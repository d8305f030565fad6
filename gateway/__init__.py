"""HTTP gateway: the public job API (built by the service issue)."""
