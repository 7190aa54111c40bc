"""Test and demo helpers that ship with the package: a tiny local LLM and a scripted stub server."""
