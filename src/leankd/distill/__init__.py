"""Distillation: losses, forward-hook taps, layer pairs and adapters, layer importance, and the Distiller module."""
