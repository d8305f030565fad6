"""Webhook signing (the Standard Webhooks test vector) and the destination rules."""

from __future__ import annotations

import ipaddress

import pytest

from shared.service.webhooks import AllowList, RefusedDestinationError, check_addresses, check_url, headers, sign

ip = ipaddress.ip_address


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    sent = headers(secret, "msg_1", 1700000000, body)
    assert sent["webhook-id"] == "msg_1" and sent["webhook-timestamp"] == "1700000000"
    assert sent["webhook-signature"] != sign(secret, "msg_1", 1700000001, body)  # the timestamp is signed


@pytest.mark.parametrize(
    ("host", "addresses", "allow", "ok"),
    [
        ("hooks.example.com", ["93.184.216.34"], ["hooks.example.com"], True),
        ("a.hooks.example.com", ["93.184.216.34"], ["*.hooks.example.com"], True),
        ("evil.com", ["93.184.216.34"], ["*.hooks.example.com"], False),  # not on the list
        ("hooks.example.com", ["10.0.0.7"], ["hooks.example.com"], False),  # a listed name that resolves privately
        ("hooks.example.com", ["93.184.216.34", "127.0.0.1"], ["hooks.example.com"], False),  # any address counts
        ("127.0.0.1", ["127.0.0.1"], ["hooks.example.com"], False),  # loopback
        ("169.254.169.254", ["169.254.169.254"], ["169.254.0.0/16"], True),  # link-local, allowed explicitly
        ("169.254.169.254", ["169.254.169.254"], ["0.0.0.0/0"], True),  # an operator's (unwise) choice
        ("localhost", ["127.0.0.1"], ["127.0.0.1/32"], True),  # the tests' setting
        ("localhost", ["::1"], ["127.0.0.1/32"], False),
        ("x", ["::ffff:10.0.0.1"], ["x"], False),  # an IPv4-mapped private address
        ("x", [], ["x"], False),
    ],
)
def test_destinations(host: str, addresses: list[str], allow: list[str], ok: bool) -> None:
    rules = AllowList.parse(allow)
    if ok:
        check_addresses(host, [ip(a) for a in addresses], rules)
    else:
        with pytest.raises(RefusedDestinationError):
            check_addresses(host, [ip(a) for a in addresses], rules)


def test_the_submit_time_check() -> None:
    with pytest.raises(RefusedDestinationError, match="off"):
        check_url("https://hooks.example.com/x", [])
    for bad in ("ftp://hooks.example.com/", "https://user:pw@hooks.example.com/", "https:///nohost", "http://[::1"):
        with pytest.raises(RefusedDestinationError):
            check_url(bad, ["hooks.example.com"])
    with pytest.raises(RefusedDestinationError, match="loopback"):
        check_url("http://127.0.0.2:9/", ["127.0.0.1/32"])
    with pytest.raises(RefusedDestinationError, match="allow-list"):
        check_url("https://other.example.com/", ["hooks.example.com"])
    check_url("http://127.0.0.1:8080/x", ["127.0.0.1/32"])
    check_url("https://some.name/", ["10.0.0.0/8"], lambda host, port: [ip("10.1.2.3")])  # resolved now
    with pytest.raises(RefusedDestinationError, match="private"):
        check_url("https://hooks.example.com/x", ["hooks.example.com"], lambda host, port: [ip("192.168.1.1")])

    def no_dns(host: str, port: int) -> list:
        raise OSError("no DNS")

    check_url("https://hooks.example.com/x", ["hooks.example.com"], no_dns)  # listed: the send-time check decides
    with pytest.raises(RefusedDestinationError, match="resolve"):
        check_url("https://some.name/", ["10.0.0.0/8"], no_dns)
