"""Test-support infrastructure: tiny local models, a local TGI/OpenAI-style HTTP server and a real OTLP collector.

Everything here works without network access (beyond 127.0.0.1) so tests can exercise real code paths
(real tokenizers, real transformers models, real HTTP, real OTLP export) instead of mocks.
"""
