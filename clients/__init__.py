"""freshrec's Python clients: `from clients import Client, UpdaterClient, RedisEventWriter`."""

from clients.client import Client, Recommendation
from clients.redis_events import RedisEventWriter
from clients.updater_client import FeedbackResult, UpdaterClient

__all__ = ["Client", "FeedbackResult", "Recommendation", "RedisEventWriter", "UpdaterClient"]
