"""The per-tenant inference endpoints (Open Inference Protocol v2) as an ASGI app."""
