"""The service plumbing shared by the gateway and the workers (no torch here): settings, Redis keys,
result storage, job progress and the RQ worker."""
