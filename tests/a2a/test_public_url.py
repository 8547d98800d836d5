"""`[a2a] url`: the public base URL an agent's card names, whatever Host a request names
(an operator behind a reverse proxy or a CDN, which may key its cache by the path alone);
a URL that is not absolute http(s), or carries a query, a fragment or a user name, is
refused at load, `corral check-config` saying so. A real daemon, in process; real HTTP
clients sending Hosts of their own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from corral.daemon.caller import Caller
from corral.supervisor.config import ConfigError
from corral.supervisor.configload import load_config

from ..daemon_harness import corral_run, free_port, hello, in_process

ROOT = Path(__file__).resolve().parent.parent.parent
CARD = "/a2a/{agent}/.well-known/agent-card.json"
NOT_ABSOLUTE = "is not an absolute http:// or https:// URL"
QUERY = "carries a query or a fragment: the cards' URLs are under it, as a path"
USER = "carries a user name: every card's reader would read it"

# a URL refused -> (as the refusal shows it, its words)
REFUSED = {
    "ftp://agents.example.com": ("ftp://agents.example.com", NOT_ABSOLUTE),
    "agents.example.com/corral": ("agents.example.com/corral", NOT_ABSOLUTE),
    "/corral": ("/corral", NOT_ABSOLUTE),
    "https:///corral": ("https:///corral", NOT_ABSOLUTE),
    "https://agents.example.com:99999/": ("https://agents.example.com:99999/", NOT_ABSOLUTE),
    "https://agents.example.com:/": ("https://agents.example.com:/", NOT_ABSOLUTE),
    "https://agents.example.com/a b": ("https://agents.example.com/a b", NOT_ABSOLUTE),
    "https://agents.example.com/corral?tenant=acme": (
        "https://agents.example.com/corral?tenant=acme", QUERY),
    "https://agents.example.com/?": ("https://agents.example.com/?", QUERY),
    "https://agents.example.com/corral#top": ("https://agents.example.com/corral#top", QUERY),
    "https://ops:hunter2@agents.example.com/": ("https://ops:***@agents.example.com/", USER),
}


@pytest.mark.parametrize("url", sorted(REFUSED))
def test_a_url_not_absolute_http_or_with_a_query_is_refused_at_load(
        tmp_path: Path, url: str) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(f'[a2a]\nurl = "{url}"\n')
    shown, words = REFUSED[url]
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == f"{path}: a2a: url {shown!r} {words}"


def test_check_config_says_the_urls_refusal(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text('[a2a]\nurl = "https://agents.example.com/corral?tenant=acme"\n')
    said = corral_run(["check-config", "--no-check", str(path)],
                      env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (said.returncode, said.stdout, said.stderr) == (
        1, "", f"corral: invalid config: {path}: a2a: url "
               f"'https://agents.example.com/corral?tenant=acme' {QUERY}\n")


@pytest.mark.parametrize(("url", "read"), [
    ("https://agents.example.com/corral/", "https://agents.example.com/corral"),
    ("http://[::1]:8080", "http://[::1]:8080"),
])
def test_a_url_taken_is_read_without_its_trailing_slash(
        tmp_path: Path, url: str, read: str) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(f'[a2a]\nurl = "{url}"\n')
    assert load_config(path).a2a.url == read


@pytest.mark.deadline(120)
async def test_the_card_names_the_public_url_whatever_the_host(tmp_path: Path) -> None:
    """Set, the card's interfaces and provider are under the URL for a request of any
    Host, the same card (its ETag) for each, and it does not say it varies by Host (a
    cache keyed by the path serves every client the one card, which is right). A reload
    that takes it off names the request's Host again, varying by it, from the next
    request."""
    port = free_port()
    toml = (f'[http]\nlisten = "127.0.0.1:{port}"\n\n'
            '[a2a]\nanonymous = ["hello"]\nurl = "https://agents.example.com/corral/"\n')
    public = "https://agents.example.com/corral/a2a/hello"
    async with in_process(tmp_path, hello("hello"), toml) as d:
        url = f"http://127.0.0.1:{port}{CARD.format(agent='hello')}"
        etags = set()
        async with aiohttp.ClientSession() as http:
            for host in ("evil.example", f"127.0.0.1:{port}", "agents.example.com"):
                async with http.get(url, headers={"Host": host}) as r:
                    assert r.status == 200, await r.text()
                    card: dict[str, Any] = await r.json()
                    assert {i["url"] for i in card["supportedInterfaces"]} == {public}, card
                    assert card["provider"]["url"] == public, card
                    assert (r.headers["Cache-Control"], r.headers.get("Vary")) == (
                        "public, max-age=300", None), dict(r.headers)
                    etags.add(r.headers["ETag"])
            [etag] = etags
            async with http.get(url, headers={"Host": "evil.example",
                                              "If-None-Match": etag}) as r:
                assert (r.status, r.headers.get("Vary")) == (304, None), dict(r.headers)
            config = tmp_path / "corral.toml"
            config.write_text(config.read_text().replace(
                'url = "https://agents.example.com/corral/"\n', ""))
            await d.dispatcher.call(Caller(via="socket", uid=0), "config.reload", {})
            async with http.get(url, headers={"Host": "evil.example"}) as r:
                assert r.status == 200, await r.text()
                card = await r.json()
                assert card["supportedInterfaces"][0]["url"] == \
                    "http://evil.example/a2a/hello", card
                assert r.headers.get("Vary") == "Host", dict(r.headers)
