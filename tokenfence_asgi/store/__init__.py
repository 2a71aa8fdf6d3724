"""The budget store: Redis, Redis Cluster or embedded, the key schema and the Lua scripts."""
