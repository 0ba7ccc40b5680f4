"""Thin routers: parse, call the service, render."""
