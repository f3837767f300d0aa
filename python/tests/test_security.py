"""Tokens and TLS: a server with TLS, client certificates (mutual TLS) and bearer tokens."""

from __future__ import annotations

import grpc
import pytest

import dropnet
from conftest import TLS_DIR, Server

ADMIN = "admin-token-0123456789abcdef"
PREDICT = "predict-token-0123456789abcdef"
CLIENT_CERT = dropnet.TLS(ca=TLS_DIR / "ca.pem", cert=TLS_DIR / "client.pem",
                          key=TLS_DIR / "client.key")


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    dir = tmp_path_factory.mktemp("secure")
    tokens = dir / "tokens"
    tokens.write_text(f"# role token\nadmin {ADMIN}\npredict {PREDICT}\n")
    s = Server(dir, "--tls-cert", str(TLS_DIR / "server.pem"), "--tls-key",
               str(TLS_DIR / "server.key"), "--tls-client-ca", str(TLS_DIR / "ca.pem"),
               "--tokens-file", str(tokens))
    yield s
    s.stop()


SPEC = {"inputShape": [4], "layers": [{"type": "dense", "units": 3}]}


def test_tokens_and_roles(secure):
    with dropnet.Client(secure.address, tls=CLIENT_CERT, token="") as anonymous:
        assert anonymous.health()  # health stays open for probes
        with pytest.raises(dropnet.Unauthenticated) as e:
            anonymous.list_models()
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with dropnet.Client(secure.address, tls=CLIENT_CERT, token="wrong-token-0123456789") as c:
        with pytest.raises(dropnet.Unauthenticated):
            c.list_models()
    with dropnet.Client(secure.address, tls=CLIENT_CERT, token=ADMIN) as admin:
        assert admin.create_model("secured", SPEC).version == 1
    with dropnet.Client(secure.address, tls=CLIENT_CERT, token=PREDICT) as reader:
        assert [m.name for m in reader.list_models()] == ["secured"]
        assert reader.predict("secured", [[1, 2, 3, 4]]).outputs.shape == (1, 3)
        with pytest.raises(dropnet.PermissionDenied) as e:
            reader.create_model("other", SPEC)
        assert "admin" in e.value.message


def test_token_from_environment(secure, monkeypatch):
    monkeypatch.setenv("DROPNET_TOKEN", PREDICT)
    monkeypatch.setenv("DROPNET_SERVER", secure.address)
    with dropnet.Client(tls=CLIENT_CERT) as c:
        assert c.target == secure.address
        c.list_models()


def test_tls_paths(secure):
    with dropnet.Client(secure.address, token=ADMIN, timeout=5, max_attempts=2) as plain:
        with pytest.raises(dropnet.Unavailable):
            plain.list_models()
    with dropnet.Client(secure.address, token=ADMIN, tls=TLS_DIR / "ca.pem", timeout=5,
                        max_attempts=2) as no_cert:
        with pytest.raises(dropnet.Unavailable):  # mutual TLS wants a client certificate
            no_cert.list_models()
    untrusted = dropnet.TLS(ca=TLS_DIR / "other-ca.pem", cert=TLS_DIR / "client.pem",
                            key=TLS_DIR / "client.key")
    with dropnet.Client(secure.address, token=ADMIN, tls=untrusted, timeout=5,
                        max_attempts=2) as c:
        with pytest.raises(dropnet.Unavailable):
            c.list_models()
    named = dropnet.TLS(ca=TLS_DIR / "ca.pem", cert=TLS_DIR / "client.pem",
                        key=TLS_DIR / "client.key", server_name="localhost")
    with dropnet.Client(f"localhost:{secure.port}", token=ADMIN, tls=named) as c:
        c.list_models()


async def _async_calls(address):
    async with dropnet.AsyncClient(address, tls=CLIENT_CERT, token=PREDICT) as c:
        with pytest.raises(dropnet.PermissionDenied):
            await c.delete_model("secured")
        return [m.name for m in await c.list_models()]


def test_async_client_with_tls_and_token(secure):
    import asyncio
    assert "secured" in asyncio.run(_async_calls(secure.address))
