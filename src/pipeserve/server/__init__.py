"""The HTTP layer: the app factory, thin routers, auth and the one error renderer."""

from pipeserve.server.app import create_app

__all__ = ["create_app"]
