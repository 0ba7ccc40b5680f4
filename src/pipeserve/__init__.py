"""pipeserve: a self-hosted, OpenPipe-compatible LLM server."""

__version__ = "0.1.0"
