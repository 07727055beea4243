"""freshrec's Python clients: `from clients import Client, UpdaterClient`."""

from clients.client import Client, Recommendation
from clients.updater_client import FeedbackResult, UpdaterClient

__all__ = ["Client", "FeedbackResult", "Recommendation", "UpdaterClient"]
