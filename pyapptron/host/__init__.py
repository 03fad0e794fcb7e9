"""Host-side (CPython) tools: the page server, the headless-browser driver, the CLI."""

from .browser import Browser, BrowserConfig, RemoteMachine, RemoteSession
from .server import PageServer
from .services import http_service

__all__ = ["Browser", "BrowserConfig", "PageServer", "RemoteMachine", "RemoteSession", "http_service"]
