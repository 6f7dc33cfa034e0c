"""chatsock: a real-time LLM chat streaming server."""

__version__ = "0.1.0"
