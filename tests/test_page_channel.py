"""Unit tests (CPython, real sockets on loopback): the WebSocket RemoteSession's page
dials. A websockets client plays the page: hello with the token, then "ID\\nJSON" frames."""

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from pyapptron.host.page_socket import WRONG_TOKEN, PageChannel, PageGone

ORIGIN = "http://127.0.0.1:8123"


@pytest.fixture
def channel():
    made = PageChannel(ORIGIN)
    yield made
    made.close()


@contextlib.contextmanager
def dial(channel, token=None, origin=ORIGIN):
    with connect(channel.url, origin=origin) as page:
        page.send(json.dumps({"pyapptron": "hello", "token": channel.token if token is None else token}))
        yield page


def test_answers_come_back_by_id_to_the_thread_that_asked_in_any_order(channel):
    def answer_two_in_reverse(page):
        first, second = page.recv(10), page.recv(10)
        for frame in (second, first):
            request_id, _, body = frame.partition("\n")
            page.send(f"{request_id}\nanswer to {json.loads(body)['n']}")

    with dial(channel) as page, ThreadPoolExecutor(3) as pool:
        assert channel.wait_connected(5)
        served = pool.submit(answer_two_in_reverse, page)
        answers = list(pool.map(lambda n: channel.request(json.dumps({"n": n}), 10), [1, 2]))
        served.result(10)
    assert answers == ["answer to 1", "answer to 2"]


def test_a_page_without_the_token_is_closed_and_never_served(channel):
    with dial(channel, token="guessed") as page, pytest.raises(ConnectionClosed) as info:
        page.recv(10)
    assert info.value.rcvd.code == WRONG_TOKEN
    assert not channel.wait_connected(0)


def test_a_page_from_another_origin_cannot_connect(channel):
    with pytest.raises(InvalidStatus) as info, dial(channel, origin="http://evil.example"):
        pass
    assert info.value.response.status_code == 403


def test_a_page_that_goes_away_fails_what_is_pending_and_what_comes_later(channel):
    with dial(channel) as page, ThreadPoolExecutor(1) as pool:
        assert channel.wait_connected(5)
        pending = pool.submit(channel.request, "{}", 60)
        page.recv(10)  # the request reached the page, which then closes without answering
        page.close()
        with pytest.raises(PageGone, match="closed its connection"):
            pending.result(10)
    with pytest.raises(PageGone):
        channel.request("{}", 60)


def test_an_unanswered_request_gives_up_after_its_backstop(channel):
    with dial(channel):
        assert channel.wait_connected(5)
        with pytest.raises(TimeoutError, match="no answer within 0.2 s"):
            channel.request("{}", 0.2)
