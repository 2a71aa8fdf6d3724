"""One paid LLM call from any client: its shape, its plan, its reservation (shared by adapters)."""
