"""The engine: plain Python + torch. Imports nothing from server/ or router/."""
