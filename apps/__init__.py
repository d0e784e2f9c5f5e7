"""Berth's Django apps."""
