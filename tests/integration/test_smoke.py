from __future__ import annotations


def test_valid_client_reaches_django_with_identity(proxy, pki):
    client = pki.client("device-smoke")
    status, body = proxy.get_json(pki.client_context(client), "/api/echo?x=1")
    assert status == 200
    assert body["client_cert"]["common_name"] == "device-smoke"
    assert body["query_string"] == "x=1"
