"""HTTP: the /smooth JSON codec, routes, schemas and OpenAPI docs."""
