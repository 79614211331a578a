"""Router: an OpenAI-compatible gateway in front of model servers. Speaks HTTP only."""
