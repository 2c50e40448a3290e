"""mixerlab evaluators: read run directories, write tables and plots (`python -m eval.<name>`)."""
