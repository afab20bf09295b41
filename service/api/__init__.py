"""The REST API (``/api/v1``, ``/metrics``, health): routers that ``service.app`` mounts."""
