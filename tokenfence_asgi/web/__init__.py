"""The HTTP layer: middleware, error responses, tenant headers, the admin app and the HTTP API."""
