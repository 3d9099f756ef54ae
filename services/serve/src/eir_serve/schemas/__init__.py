"""Pydantic models of the HTTP payloads; ``/docs`` is generated from them."""
