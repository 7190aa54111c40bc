"""Client for OpenAI-compatible LLM servers (vLLM first) and a vLLM server launcher."""
