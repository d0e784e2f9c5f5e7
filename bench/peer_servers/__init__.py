"""Peer model servers' own code, run by each peer's Python (its own virtual environment,
not the platform's): nothing here imports Berth. ``bench/peers.py`` starts them."""
