"""Versioned prompt templates (data, not code). Loaded by pipeline.prompts."""
