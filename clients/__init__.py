"""freshrec's Python client: `from clients import Client`."""

from clients.client import Client, Recommendation

__all__ = ["Client", "Recommendation"]
