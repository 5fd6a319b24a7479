"""``dns+http://name:port`` serving URLs expand to one URL per address of the name, so the
reload flow reaches every API task registered under one private DNS name."""

from __future__ import annotations

import socket

import pytest

from bookrec.discovery import DiscoveryError, expand_urls


def test_a_dns_url_becomes_one_url_per_address_and_plain_urls_pass_through():
    addresses = {i[4][0] for i in socket.getaddrinfo("localhost", 8123, type=socket.SOCK_STREAM)}
    expected = [f"http://{f'[{a}]' if ':' in a else a}:8123" for a in addresses]
    urls = expand_urls(
        ["http://10.0.0.5:8000", "dns+http://localhost:8123/", "http://10.0.0.5:8000"]
    )
    assert urls[0] == "http://10.0.0.5:8000"
    assert sorted(urls[1:]) == sorted(expected) and "http://127.0.0.1:8123" in urls
    assert len(urls) == len(set(urls))


@pytest.mark.parametrize(
    "bad", ["dns+http://localhost", "dns+ftp://localhost:21", "dns+http://:80"]
)
def test_malformed_dns_urls_are_refused_by_name(bad):
    with pytest.raises(DiscoveryError, match="expected dns"):
        expand_urls([bad])


def test_a_name_that_does_not_resolve_is_an_error_naming_it():
    with pytest.raises(DiscoveryError, match=r"api\.bookrec\.invalid does not resolve"):
        expand_urls(["dns+http://api.bookrec.invalid:8000"])
