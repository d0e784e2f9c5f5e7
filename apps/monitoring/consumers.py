"""WebSocket consumers of the monitoring app."""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer


class PlatformHealthConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/health/``: greets a signed-in user; proves the WebSocket path is wired."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        await self.accept()
        await self.send_json({"type": "health.ok", "user": user.get_username()})
