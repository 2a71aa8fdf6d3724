"""One paid LLM call from any client: its shape, its plan and its reservation (for the adapters)."""
