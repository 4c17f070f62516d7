"""The admin web UI in a real headless Chromium (tests/browser.py) against real servers and SDK clients."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import aiohttp
import pytest
from admin_support import ADMIN_PASSWORD, admin_config
from browser import PHONE, chromium_page
from harness import PyClient, PyFactory, ServerFactory, ServerProcess, unique_channel, wait_until
from playwright.async_api import Page, expect
from redis_servers import RedisCluster
from test_redis_nodes import redis_engine

expect.set_options(timeout=15_000)

NAV = ("Nodes", "Channels", "Publish", "Presence", "History", "Live tail", "Actions")
# Every form control has a label or an accessible name; every button and link has a name.
UNNAMED_CONTROLS_JS = """() => [...document.querySelectorAll('input, textarea, select, button, a[href]')]
  .filter(el => el.offsetParent !== null)
  .filter(el => el.matches('button, a') ? !el.textContent.trim() && !el.getAttribute('aria-label')
                                        : !el.labels.length && !el.getAttribute('aria-label'))
  .map(el => el.outerHTML)"""


async def log_in(page: Page, server: ServerProcess, password: str = ADMIN_PASSWORD) -> None:
    await page.goto(server.http_url + "/")
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()


async def open_view(page: Page, name: str) -> None:
    await page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True).click()
    await expect(page.get_by_role("heading", level=2, name=name, exact=True)).to_be_focused()
    assert await page.evaluate(UNNAMED_CONTROLS_JS) == [], f"controls without a name in {name}"


async def test_login_wrong_then_right_password_and_rate_limit(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = await server_factory(admin_config())
    async with chromium_page(tmp_path / "profile") as browser:
        page = browser.page
        await log_in(page, server, "not the password")
        await expect(page.get_by_role("alert")).to_have_text("Wrong password.")
        await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
        await page.get_by_label("Password").fill(ADMIN_PASSWORD)
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("heading", name="Nodes", exact=True)).to_be_visible()
        for name in NAV:
            await expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
        # The session lives in the tab: a reload stays logged in; logging out ends it.
        await page.reload()
        await expect(page.get_by_role("heading", name="Nodes", exact=True)).to_be_visible()
        await page.get_by_role("button", name="Log out").click()
        await expect(page.get_by_role("button", name="Log in")).to_be_visible()
        # Guessing is rate-limited: after 5 failures from this address the form says to wait.
        for _ in range(5):
            await page.get_by_label("Password").fill("guess")
            await page.get_by_role("button", name="Log in").click()
            await expect(page.get_by_role("alert")).to_have_text("Wrong password.")
            await page.get_by_role("alert").evaluate("el => el.textContent = ''")
        await page.get_by_label("Password").fill(ADMIN_PASSWORD)
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("alert")).to_have_text(re.compile(r"Too many failed attempts: try again in \d+"))
        # The browser reports the refused requests themselves; nothing else went wrong.
        assert browser.unexpected_errors("status of 400", "status of 429") == []


async def node_row_cells(page: Page, node_name: str) -> list[str]:
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=node_name, exact=True))
    return [text.strip() for text in await row.get_by_role("cell").all_inner_texts()]


async def test_every_view_against_sdk_clients(server_factory: ServerFactory, py_factory: PyFactory,
                                              tmp_path: Path) -> None:
    server = await server_factory(admin_config())
    node_name = (await server.api_result("info"))["nodes"][0]["name"]
    channel, other = unique_channel("chat:"), unique_channel("chat:")
    alice, bob = await py_factory(server, "alice"), await py_factory(server, "bob")
    await alice.subscribe(channel)
    await bob.subscribe(channel)
    await bob.subscribe(other)
    async with chromium_page(tmp_path / "profile") as browser:
        page = browser.page
        await log_in(page, server)

        # Nodes: live counts, without a reload, when another client connects.
        await expect(page.get_by_role("cell", name=node_name, exact=True)).to_be_visible()
        assert (await node_row_cells(page, node_name))[3:6] == ["2", "2", "3"]  # clients, users, subscriptions
        await py_factory(server, "carol")
        await wait_until(lambda: _cells_at(page, node_name, 3, "3"), timeout=15, what="the live client count")
        await expect(page.get_by_text(re.compile(r"^3 clients|, 3 clients"))).to_be_visible()

        # Channels: searchable, with subscriber counts.
        await open_view(page, "Channels")
        await page.get_by_label("Search channels").fill(channel.split(":")[1])
        row = page.get_by_role("row").filter(has_text=channel)
        await expect(row).to_have_count(1)
        await expect(row.get_by_role("cell").nth(1)).to_have_text("2")
        await expect(page.get_by_role("row").filter(has_text=other)).to_have_count(0)
        await page.get_by_label("Search channels").fill("no-such-channel-anywhere")
        await expect(page.get_by_text("Nothing to show")).to_be_visible()

        # Publish: a subscribed SDK client receives it; errors are shown; several channels are a broadcast.
        await open_view(page, "Publish")
        await page.get_by_label("Channel").fill(channel)
        await page.get_by_label("Data").fill('{"text": "from the UI"}')
        await page.get_by_role("button", name="Publish").click()
        published = re.compile(rf"Published to {channel}: offset 1, epoch \w+")
        await expect(page.get_by_role("status")).to_have_text(published)
        assert (await alice.wait("publication", channel)).ctx.pub.data == {"text": "from the UI"}
        await page.get_by_label("Data").fill("{not json")
        await page.get_by_role("button", name="Publish").click()
        await expect(page.get_by_role("status")).to_have_text(re.compile("Data is not valid JSON"))
        await page.get_by_label("Channel").fill("nowhere:x")
        await page.get_by_label("Data").fill("{}")
        await page.get_by_role("button", name="Publish").click()
        await expect(page.get_by_role("status")).to_have_text("Error 102: unknown channel")
        await page.get_by_label("Channel").fill(f"{channel}, {other}")
        await page.get_by_label("Data").fill('{"text": "to both"}')
        await page.get_by_role("button", name="Publish").click()
        await expect(page.get_by_role("status")).to_have_text(re.compile(r"Broadcast to 2 channels.*offset 2"))
        assert (await bob.wait_event(lambda e: e.kind == "publication" and e.channel == other)).ctx.pub.data == {
            "text": "to both"}

        # Presence and History of the channel.
        await open_view(page, "Presence")
        await page.get_by_label("Channel").fill(channel)
        await page.get_by_role("button", name="Show presence").click()
        await expect(page.get_by_role("status")).to_have_text(f"{channel}: 2 clients, 2 users")
        for user in ("alice", "bob"):
            await expect(page.get_by_role("cell", name=user, exact=True)).to_be_visible()
        await open_view(page, "History")
        await page.get_by_label("Channel").fill(channel)
        await page.get_by_role("button", name="Show history").click()
        await expect(page.get_by_role("status")).to_have_text(re.compile(rf"{channel}: stream at offset 2"))
        await expect(page.get_by_role("cell", name='{"text":"from the UI"}')).to_be_visible()

        # The live tail shows publications as they happen.
        await open_view(page, "Live tail")
        await page.get_by_label("Channel").fill(channel)
        await page.get_by_role("button", name="Start").click()
        await expect(page.get_by_role("status")).to_have_text(re.compile(f"Listening to {channel}"))
        await server.api_result("publish", {"channel": channel, "data": {"live": 1}})
        await expect(page.get_by_role("log").get_by_role("listitem")).to_have_text(['#3 {"live":1}'])
        await page.get_by_role("button", name="Stop").click()
        await expect(page.get_by_role("button", name="Start")).to_be_visible()
        # Leaving the view while tailing (the Actions view next) ends the stream without a console error.
        await page.get_by_role("button", name="Start").click()
        await expect(page.get_by_role("status")).to_have_text(re.compile(f"Listening to {channel}"))

        await run_actions(page, server, alice, bob, channel)
        await check_keyboard_and_phone(page)
        assert browser.unexpected_errors() == []


def _cells_at(page: Page, node_name: str, index: int, value: str) -> object:
    async def check() -> bool:
        return (await node_row_cells(page, node_name))[index] == value
    return check()


async def run_actions(page: Page, server: ServerProcess, alice: PyClient, bob: PyClient, channel: str) -> None:
    await open_view(page, "Actions")
    unsubscribe = page.get_by_role("group", name="Unsubscribe a user")
    await unsubscribe.get_by_label("User").fill("alice")
    await unsubscribe.get_by_label("Channel").fill(channel)
    await unsubscribe.get_by_role("button", name="Unsubscribe").click()
    dialog = page.get_by_role("dialog", name="Are you sure?")
    await expect(dialog).to_contain_text(f'unsubscribe user "alice" from {channel}')
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(unsubscribe.get_by_role("status")).to_have_text("Cancelled.")
    assert not alice.events("unsubscribed", channel)
    await unsubscribe.get_by_role("button", name="Unsubscribe").click()
    await dialog.get_by_role("button", name="Confirm").click()
    await expect(unsubscribe.get_by_role("status")).to_have_text(re.compile("^Done"))
    await alice.wait("unsubscribed", channel)

    disconnect = page.get_by_role("group", name="Disconnect a user")
    await disconnect.get_by_label("User").fill("bob")
    await disconnect.get_by_role("button", name="Disconnect").click()
    await dialog.get_by_role("button", name="Confirm").click()
    await bob.wait("disconnected")

    remove = page.get_by_role("group", name="Remove history")
    await remove.get_by_label("Channel").fill(channel)
    await remove.get_by_role("button", name="Remove history").click()
    await expect(dialog).to_contain_text(f"remove the history of {channel}")
    await page.keyboard.press("Enter")  # the dialog's focused button is Confirm
    await expect(remove.get_by_role("status")).to_have_text(re.compile("^Done"))
    history = await server.api_result("history", {"channel": channel, "limit": -1})
    assert history["publications"] == [] and history["offset"] == 3  # entries gone, position kept


async def check_keyboard_and_phone(page: Page) -> None:
    # Keyboard only: Tab to a navigation link, Enter opens the view and focus lands on its heading.
    await page.get_by_role("heading", level=2).focus()
    for _ in range(30):
        await page.keyboard.press("Shift+Tab")
        if await page.evaluate("document.activeElement.textContent") == "Channels":
            break
    else:
        raise AssertionError("the Channels link cannot be reached with the keyboard")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=2, name="Channels")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Search channels")).to_be_focused()

    # A 390-px-wide phone: every view fits the width (tables scroll inside their own region) and the
    # navigation stays on screen.
    await page.set_viewport_size(PHONE)
    links = [t.strip() for t in await page.get_by_role("navigation", name="Main").get_by_role("link").all_inner_texts()]
    assert set(NAV) <= set(links)  # and Connections, when the server has that method
    for name in links:
        await open_view(page, name)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{name} is {width}px wide on a phone"
        for link in links:
            box = await page.get_by_role("link", name=link, exact=True).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], link


async def save_screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """Into the test's directory, and into $FUGATO_SCREENSHOT_DIR if set (how docs/admin-nodes.png is made)."""
    await page.screenshot(path=str(tmp_path / name))
    target = os.environ.get("FUGATO_SCREENSHOT_DIR")
    if target:
        await page.screenshot(path=str(Path(target) / name))


async def test_connections_view_follows_the_server_api(server_factory: ServerFactory, py_factory: PyFactory,
                                                        tmp_path: Path) -> None:
    """The Connections view is offered when the server has the ``connections`` API method, and only then."""
    server = await server_factory(admin_config())
    _, _, body = await server.http("GET", "/admin/init")
    has_connections = "connections" in json.loads(body)["methods"]
    channel = unique_channel("chat:")
    await (await py_factory(server, "gina")).subscribe(channel)
    await py_factory(server, "hank")
    async with chromium_page(tmp_path / "profile") as browser:
        page = browser.page
        await log_in(page, server)
        await expect(page.get_by_role("heading", name="Nodes", exact=True)).to_be_visible()
        link = page.get_by_role("navigation", name="Main").get_by_role("link", name="Connections", exact=True)
        if not has_connections:
            await expect(link).to_have_count(0)
            await page.goto(server.http_url + "/#connections")  # asked for anyway: the Nodes view instead
            await expect(page.get_by_role("heading", level=2, name="Nodes", exact=True)).to_be_visible()
        else:
            await open_view(page, "Connections")
            await expect(page.get_by_role("status")).to_have_text("2 connections")
            await page.get_by_label("Channel").fill(channel)
            await page.get_by_role("button", name="Show connections").click()
            await expect(page.get_by_role("status")).to_have_text("1 connection")
            row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="gina", exact=True))
            await expect(row).to_contain_text(channel)
            await expect(row).to_contain_text("websocket")
            await page.get_by_label("Channel").fill("")
            await page.get_by_label("User").fill("nobody")
            await page.get_by_role("button", name="Show connections").click()
            await expect(page.get_by_role("status")).to_have_text("0 connections")
        assert browser.unexpected_errors() == []


async def test_unauthenticated_page_shows_only_the_login(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = await server_factory(admin_config())
    async with chromium_page(tmp_path / "profile", PHONE) as browser:
        page = browser.page
        await page.goto(server.http_url + "/#publish")
        await expect(page.get_by_role("button", name="Log in")).to_be_visible()
        await expect(page.get_by_label("Password")).to_be_focused()
        assert await page.evaluate(UNNAMED_CONTROLS_JS) == []
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        await expect(page.get_by_role("heading", name="Publish")).to_have_count(0)
        assert browser.unexpected_errors() == []


@pytest.fixture
async def admin_workers(server_factory: ServerFactory, redis_cluster: RedisCluster,
                        redis_prefix: str) -> ServerProcess:
    config = redis_engine(redis_cluster.url, redis_prefix) | admin_config() | {"shutdown": {"timeout": "5s"}}
    server = await server_factory(config, name="workers", extra_args=("--workers", "2"))

    async def two_nodes() -> bool:
        return len((await server.api_result("info"))["nodes"]) == 2

    await wait_until(two_nodes, timeout=15)
    return server


async def test_every_worker_serves_the_ui_and_shows_the_cluster(admin_workers: ServerProcess, py_factory: PyFactory,
                                                                tmp_path: Path) -> None:
    server = admin_workers
    names = sorted(n["name"] for n in (await server.api_result("info"))["nodes"])
    # Fresh connections land on either worker (SO_REUSEPORT): each serves the page and the admin endpoints,
    # sees both nodes, and accepts a session token that the other one issued.
    token, seen = "", set()
    for _ in range(100):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.get(f"{server.http_url}/admin/init",
                                   headers={"Authorization": f"token {token}"} if token else {}) as resp:
                init = await resp.json()
            if token:
                assert init["authenticated"], init["node"]
                async with session.post(f"{server.http_url}/admin/api", json={"method": "info", "params": {}},
                                        headers={"Authorization": f"token {token}"}) as resp:
                    assert sorted(n["name"] for n in (await resp.json())["result"]["nodes"]) == names
            else:
                async with session.post(f"{server.http_url}/admin/auth", data={"password": ADMIN_PASSWORD}) as resp:
                    token = (await resp.json())["token"]
            async with session.get(f"{server.http_url}/admin.js") as resp:
                assert resp.status == 200
        seen.add(init["node"]["name"])
        if len(seen) == 2 and token:
            break
    assert sorted(seen) == names, "both workers should have answered"

    channel = unique_channel("chat:")
    subscriber = await py_factory(server, "dave")
    await subscriber.subscribe(channel)
    for user in ("erin", "frank"):
        await (await py_factory(server, user)).subscribe(channel)
    async with chromium_page(tmp_path / "profile") as browser:
        page = browser.page
        await log_in(page, server)
        for name in names:
            await expect(page.get_by_role("cell", name=name, exact=True)).to_be_visible()
        await wait_until(lambda: _cluster_clients(page, names), timeout=15, what="3 clients in the cluster")
        await save_screenshot(page, "admin-nodes.png", tmp_path)
        await open_view(page, "Publish")
        await page.get_by_label("Channel").fill(channel)
        await page.get_by_label("Data").fill(json.dumps({"via": "workers"}))
        await page.get_by_role("button", name="Publish").click()
        await expect(page.get_by_role("status")).to_have_text(re.compile("offset 1"))
        assert (await subscriber.wait("publication", channel)).ctx.pub.data == {"via": "workers"}
        assert browser.unexpected_errors() == []


def _cluster_clients(page: Page, names: list[str]) -> object:
    async def check() -> bool:
        counts = [int((await node_row_cells(page, name))[3]) for name in names]
        return sum(counts) == 3
    return check()


async def test_insecure_mode_opens_without_login_and_says_so(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = await server_factory({"admin": {"enabled": True, "insecure": True}})
    async with chromium_page(tmp_path / "profile") as browser:
        page = browser.page
        await page.goto(server.http_url + "/")
        await expect(page.get_by_role("heading", level=2, name="Nodes", exact=True)).to_be_visible()
        await expect(page.get_by_role("note")).to_contain_text("Insecure mode")
        await expect(page.get_by_label("Password")).to_have_count(0)
        await expect(page.get_by_role("button", name="Log out")).to_be_hidden()
        assert browser.unexpected_errors() == []
