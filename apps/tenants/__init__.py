"""Tenants, memberships, API keys and quotas (see the tenants issue)."""
