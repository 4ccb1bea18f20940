"""``voicecore providers`` and ``/v1/providers``: the same repository calls, a real SQLite data
directory, a real server; secrets go in and are never shown again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from voicecore.cli import cli
from voicecore.server import create_app, running_server
from voicecore.storage import Store

TENANTS = {"acme": None}


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def test_set_reads_a_secret_from_stdin_and_never_shows_it(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    assert run("tenants", "add", "acme", "--data-dir", data).exit_code == 0
    out = run("providers", "set", "twilio", "--tenant", "acme", "auth_token=-", "account_sid=ACacme1",
              "--data-dir", data, input="the-twilio-auth-token\n")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "auth_token" in out.output and "the-twilio-auth-token" not in out.output
    listed = run("providers", "list", "--tenant", "acme", "--json", "--data-dir", data)
    assert '"secrets_set": [\n      "auth_token"' in listed.output or '"auth_token"' in listed.output
    assert "the-twilio-auth-token" not in listed.output and "ACacme1" in listed.output
    with Store(data) as store:
        assert store.providers.secrets("acme", "twilio") == {"auth_token": "the-twilio-auth-token",
                                                             "account_sid": "ACacme1"}  # fmt: skip
        db = b"".join(p.read_bytes() for p in store.files())
        assert b"the-twilio-auth-token" not in db  # encrypted at rest
        assert any(e.action == "provider.credentials_set" for e in store.audit.list("acme"))
    bad = run("providers", "set", "twilio", "--tenant", "acme", "auth_tokn=x", "--data-dir", data)
    assert bad.exit_code != 0 and "no credential 'auth_tokn'" in bad.output
    bad = run("providers", "set", "telnyx", "--tenant", "acme", "public_key=notbase64!", "--data-dir", data)
    assert bad.exit_code != 0 and "public_key" in bad.output
    gone = run("providers", "delete", "twilio", "--tenant", "acme", "--data-dir", data)
    assert gone.exit_code == 0 and "Deleted" in gone.output


@pytest.mark.parametrize("provider", ["twilio", "telnyx", "vonage", "plivo", "exotel", "asterisk"])
def test_snippet_for_each_provider(tmp_path: Path, provider: str) -> None:
    data = str(tmp_path / "data")
    key_out = run("tenants", "add", "acme", "--json", "--data-dir", data)
    out = run("providers", "snippet", provider, "--tenant", "acme", "--pipeline", "receptionist",
              "--public-url", "https://voice.example.com/", "--data-dir", data)  # fmt: skip
    assert out.exit_code == 0, out.output
    text = out.output
    assert "vck_" not in text and key_out.output.split('"api_key": "')[1][:20] not in text
    assert f"wss://voice.example.com/ws/{provider}" in text
    assert "ws://" not in text.replace("wss://", "")
    if provider != "asterisk":
        assert f"https://voice.example.com/providers/{provider}/acme/answer" in text or provider == "exotel"
    if provider in ("exotel", "asterisk", "telnyx"):
        secret = next(w for w in text.replace(":", " ").replace("@", " ").replace('"', " ").split()
                      if w.startswith("vcs"))  # fmt: skip
        with Store(data) as store:
            assert store.providers.authenticate_stream_secret(provider, secret) == "acme"
        again = run("providers", "snippet", provider, "--tenant", "acme", "--public-url", "https://voice.example.com",
                    "--data-dir", data)  # fmt: skip
        assert secret not in again.output and "<STREAM_SECRET>" in again.output  # shown once
    else:
        assert "missing" in text and f"voicecore providers set {provider}" in text


def test_snippet_needs_a_usable_public_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = str(tmp_path / "data")
    run("tenants", "add", "acme", "--data-dir", data)
    monkeypatch.delenv("VOICECORE_PUBLIC_URL", raising=False)
    out = CliRunner().invoke(cli, ["providers", "snippet", "twilio", "--tenant", "acme", "--data-dir", data])
    assert out.exit_code != 0 and "--public-url" in out.output
    out = run("providers", "snippet", "twilio", "--tenant", "acme", "--public-url", "voice.example.com",
              "--data-dir", data)  # fmt: skip
    assert out.exit_code != 0 and "https://host" in out.output
    monkeypatch.setenv("VOICECORE_PUBLIC_URL", "https://env.example.com")
    out = CliRunner().invoke(cli, ["providers", "snippet", "twilio", "--tenant", "acme", "--data-dir", data])
    assert out.exit_code == 0 and "https://env.example.com/providers/twilio/acme/answer" in out.output


async def test_the_api_sets_lists_snippets_and_deletes(store: Store, receptionist: Any, tmp_path: Path) -> None:
    admin = store.tenants.create_api_key("acme", role="admin", actor="test")
    viewer = store.tenants.create_api_key("acme", role="viewer", actor="test")
    pipelines = {receptionist.name: receptionist}
    app = create_app(data_dir=tmp_path, store=store, preload=False, pipelines=pipelines,
                     public_url="https://voice.example.com")  # fmt: skip
    async with running_server(app) as base, aiohttp.ClientSession() as http:
        def auth(key: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}"}

        async with http.put(f"{base}/v1/providers/plivo", json={"credentials": {"auth_token": "plivo-secret"}},
                            headers=auth(viewer)) as r:  # fmt: skip
            assert r.status == 403
        assert store.providers.get("acme", "plivo") is None
        async with http.put(f"{base}/v1/providers/plivo", json={"credentials": {"auth_token": "plivo-secret"}},
                            headers=auth(admin)) as r:  # fmt: skip
            body = await r.json()
            assert r.status == 200 and body["secrets_set"] == ["auth_token"] and "plivo-secret" not in str(body)
        assert store.providers.secrets("acme", "plivo") == {"auth_token": "plivo-secret"}
        async with http.put(f"{base}/v1/providers/plivo", json={"credentials": {"nope": "x"}}, headers=auth(admin)) as r:
            assert r.status == 422 and "nope" in await r.text()
        async with http.put(f"{base}/v1/providers/skype", json={"credentials": {"x": "y"}}, headers=auth(admin)) as r:
            assert r.status == 422
        async with http.get(f"{base}/v1/providers", headers=auth(admin)) as r:
            assert [a["provider"] for a in await r.json()] == ["plivo"]
        async with http.post(f"{base}/v1/providers/asterisk/snippet", json={}, headers=auth(admin)) as r:
            snippet = (await r.json())["snippet"]
            assert r.status == 200 and "uri = wss://voice.example.com/ws/asterisk" in snippet
        secret = next(line.split(" = ")[1] for line in snippet.splitlines() if line.startswith("password = "))
        assert store.providers.authenticate_stream_secret("asterisk", secret) == "acme"
        async with http.post(f"{base}/v1/providers/twilio/snippet", json={"pipeline": "nope"}, headers=auth(admin)) as r:
            assert r.status == 404
        async with http.delete(f"{base}/v1/providers/plivo", headers=auth(admin)) as r:
            assert r.status == 204
        assert store.providers.get("acme", "plivo") is None
        async with http.delete(f"{base}/v1/providers/plivo", headers=auth(admin)) as r:
            assert r.status == 404
    no_url = create_app(data_dir=tmp_path, store=store, preload=False, pipelines=pipelines)
    async with running_server(no_url) as base, aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/providers/twilio/snippet", json={},
                             headers={"Authorization": f"Bearer {admin}"}) as r:  # fmt: skip
            assert r.status == 409 and "--public-url" in await r.text()
