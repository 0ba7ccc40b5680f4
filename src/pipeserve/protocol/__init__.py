"""Pydantic wire models, one module per endpoint. Nothing else defines wire shapes."""
