"""The nodes page over HTTP, in-process (a real Tornado server, a real store): what an
admin sees, drain/undrain through the page's forms, and who is refused."""

from __future__ import annotations

import re

import pytest
import requests

from jobferry.services.core import Core, Principal
from jobferry.services.nodes import NodeService
from tests.unit.test_web_app import (
    Server,
    assert_security_headers,
    assert_site_page,
    form_token,
    get,
    post,
    sign_in,
)
from tests.unit.test_web_app import server as web_server  # noqa: F401  (the fixture)

HOSTILE = '"><img src=x onerror=alert(1)>'
#: Who reads the store behind the page's back (the service checks only is_admin).
ADMIN = Principal(user_id="-", username="admin", is_admin=True)


@pytest.fixture
def server(web_server: Server) -> Server:  # noqa: F811
    """The browser face in-process (``test_web_app``'s server)."""
    return web_server


def admin_session(server: Server) -> requests.Session:
    session = requests.Session()
    response = sign_in(session, server, username="admin")
    assert response.status_code == 303, response.text
    return session


def register_this_node(server: Server) -> str:
    server.services.nodes.register(url="http://127.0.0.1:1/")
    return server.services.core.node_name


def node_row(page: str, name: str) -> str:
    found = re.search(rf'<tr class="node" data-node="{re.escape(name)}".*?</tr>', page, re.S)
    assert found, page
    return found.group(0)


def test_an_admin_sees_each_nodes_state_resources_jobs_and_heartbeat(server: Server) -> None:
    name = register_this_node(server)
    session = admin_session(server)
    response = get(session, server.page("/ui/nodes"))
    assert_site_page(response, 200, "Nodes")
    assert_security_headers(response)
    assert 'href="/ui/nodes" aria-current="page"' in response.text
    row = node_row(response.text, name)
    [node] = server.services.nodes.list_nodes(ADMIN)
    total, free = node["total"], node["free"]
    assert f"{free['cores']} / {total['cores']}</td>" in row
    assert f"{free['gpus']} / {total['gpus']}</td>" in row
    assert re.search(r'<td class="num running">0</td>', row)
    assert '<span class="badge ok">up</span>' in row
    assert re.search(r'<time datetime="[0-9T:.+-]+"[^>]*>\d+ s ago</time>', row), row
    assert "(this node)" in row
    assert f'action="/ui/nodes/{name}/drain"' in row


def test_an_admin_drains_and_undrains_a_node_through_the_page(server: Server) -> None:
    name = register_this_node(server)
    session = admin_session(server)
    token = form_token(session, server, "/ui/nodes")
    drained = post(session, server.page(f"/ui/nodes/{name}/drain"), data={"_xsrf": token})
    assert drained.status_code == 303
    assert drained.headers["Location"] == f"/ui/nodes?drained={name}"
    admin = server.services.nodes.get
    principal = ADMIN
    assert admin(principal, name)["drained"] is True
    page = get(session, server.page(drained.headers["Location"])).text
    assert f"Node {name} drained." in page
    row = node_row(page, name)
    assert '<span class="badge warn">draining</span>' in row
    assert f'action="/ui/nodes/{name}/undrain"' in row and ">Undrain</button>" in row

    undrained = post(session, server.page(f"/ui/nodes/{name}/undrain"), data={"_xsrf": token})
    assert undrained.status_code == 303
    assert admin(principal, name)["drained"] is False
    page = get(session, server.page(undrained.headers["Location"])).text
    assert f"Node {name} undrained." in page
    assert '<span class="badge ok">up</span>' in node_row(page, name)


def test_a_user_who_is_not_an_admin_gets_the_403_page_and_drains_nothing(server: Server) -> None:
    name = register_this_node(server)
    session = requests.Session()
    sign_in(session, server)  # alice
    assert_site_page(get(session, server.page("/ui/nodes")), 403, "Not allowed")
    assert 'href="/ui/nodes"' not in get(session, server.page("/ui/")).text  # no nav link
    token = form_token(session, server, "/ui/keys")
    refused = post(session, server.page(f"/ui/nodes/{name}/drain"), data={"_xsrf": token})
    assert_site_page(refused, 403, "Not allowed")
    principal = ADMIN
    assert server.services.nodes.get(principal, name)["drained"] is False


def test_a_stranger_is_sent_to_sign_in_and_cannot_post(server: Server) -> None:
    name = register_this_node(server)
    session = requests.Session()
    response = get(session, server.page("/ui/nodes"))
    assert response.status_code == 302
    assert response.headers["Location"] == "/ui/sign-in?next=%2Fui%2Fnodes"
    token = form_token(session, server)
    refused = post(session, server.page(f"/ui/nodes/{name}/drain"), data={"_xsrf": token})
    assert_site_page(refused, 403, "Not allowed")


def test_a_drain_without_the_forms_token_is_refused(server: Server) -> None:
    name = register_this_node(server)
    session = admin_session(server)
    refused = post(session, server.page(f"/ui/nodes/{name}/drain"), data={})
    assert_site_page(refused, 403, "Not allowed")
    principal = ADMIN
    assert server.services.nodes.get(principal, name)["drained"] is False


def test_draining_a_node_that_does_not_exist_is_a_404_page(server: Server) -> None:
    session = admin_session(server)
    token = form_token(session, server, "/ui/nodes")
    response = post(session, server.page("/ui/nodes/nowhere/drain"), data={"_xsrf": token})
    assert_site_page(response, 404, "Page not found")
    assert "no node named" in response.text


def test_the_notice_names_only_a_node_that_exists(server: Server) -> None:
    register_this_node(server)
    session = admin_session(server)
    page = get(session, server.page("/ui/nodes"), params={"drained": "the whole cluster"}).text
    assert "the whole cluster" not in page and 'id="nodes-notice"' not in page


def test_a_hostile_node_name_and_labels_are_escaped_and_its_buttons_still_work(
    server: Server,
) -> None:
    config = server.services.core.config.model_copy(
        update={
            "node": server.services.core.config.node.model_copy(
                update={"labels": {HOSTILE: "<script>alert(2)</script>"}}
            )
        }
    )
    other = Core(config, runners={}, node_name=HOSTILE)
    try:
        NodeService(other).register(url="http://elsewhere.example/<b>")
    finally:
        other.close()
    session = admin_session(server)
    page = get(session, server.page("/ui/nodes")).text
    assert "<img src=x" not in page and "<script>alert" not in page and "<b>" not in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    action = re.search(r'action="(/ui/nodes/%22%3E%3Cimg[^"]*/drain)"', page)
    assert action, page
    token = form_token(session, server, "/ui/nodes")
    drained = post(session, server.page(action.group(1)), data={"_xsrf": token})
    assert drained.status_code == 303
    principal = ADMIN
    assert server.services.nodes.get(principal, HOSTILE)["drained"] is True
    notice = get(session, server.page(drained.headers["Location"])).text
    assert "Node &quot;&gt;&lt;img src=x onerror=alert(1)&gt; drained." in notice
