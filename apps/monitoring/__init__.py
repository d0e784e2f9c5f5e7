"""Health, metric rollups and the WebSocket consumers of the dashboards."""
