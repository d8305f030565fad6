from tests.gateway.conftest import redis_url  # noqa: F401 - the real Redis of the gateway tests
