"""HTTP server: OpenAI, Ollama and TGI protocols over one EngineClient."""
