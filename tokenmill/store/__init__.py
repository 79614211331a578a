"""The model store: files and names (catalog.py), pulls from Hugging Face (pull.py)."""
