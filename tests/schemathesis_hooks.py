"""schemathesis hooks for tests/test_schema_tools.py (loaded through SCHEMATHESIS_HOOKS)."""

from hypothesis import strategies as st
from schemathesis import openapi

# tus PATCH and creation-with-upload bodies are raw bytes (docs/tus.md)
openapi.media_type("application/offset+octet-stream", st.binary(max_size=4096))
