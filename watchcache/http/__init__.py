"""The HTTP layer: tornado adapter, routes and endpoints."""
