"""OpenAPI descriptions of the two endpoints that take either JSON or a multipart upload.

FastAPI derives a schema from typed parameters, but one parameter cannot be both JSON and a file upload, so
these two handlers read the body themselves and their request bodies are described here by hand.
"""

_METADATA = {
    "type": "object",
    "required": ["name"],
    "description": "name (unique) plus optional task, family, arch, params (int), num_classes (int), url "
                   "(model server for re-ranking) and any JSON extras",
    "properties": {
        "name": {"type": "string"}, "task": {"type": "string"}, "family": {"type": "string"},
        "arch": {"type": "string"}, "params": {"type": "integer", "minimum": 0},
        "num_classes": {"type": "integer", "minimum": 2}, "url": {"type": "string", "format": "uri"},
    },
    "additionalProperties": True,
}

_FILTERS = {
    "type": "object",
    "properties": {
        "task": {"type": "string"},
        "family": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "arch": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "params_min": {"type": "integer", "minimum": 0}, "params_max": {"type": "integer", "minimum": 0},
        "num_classes": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": False,
}

REGISTER = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["signature", "metadata"],
                    "properties": {
                        "signature": {"type": "string", "format": "binary",
                                      "description": ".npz made by `proxylab zoo signature` (the model stays with "
                                                     "its owner)"},
                        "metadata": {"type": "string", "description": "JSON object, see RegisterJSON.metadata"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "title": "RegisterJSON",
                    "type": "object",
                    "required": ["metadata"],
                    "properties": {
                        "url": {"type": "string", "format": "uri",
                                "description": "a model server (`proxylab zoo serve-model`) the service probes"},
                        "seed": {"type": "integer", "minimum": 0, "description": "probe seed (url only)"},
                        "vector": {"type": "array", "items": {"type": "number"},
                                   "description": "a model vector made with this zoo's encoders"},
                        "metadata": _METADATA,
                    },
                    "oneOf": [{"required": ["url"]}, {"required": ["vector"]}],
                }
            },
        },
    },
    "responses": {"201": {"description": "registered: the model's metadata with its new id"},
                  "401": {"description": "no or invalid bearer token"}, "403": {"description": "read-only token"},
                  "409": {"description": "name already registered"}, "413": {"description": "body too large"},
                  "422": {"description": "invalid signature, vector, metadata or unreachable model server"}},
}

QUERY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["samples"],
                    "properties": {
                        "samples": {"type": "string", "format": "binary",
                                    "description": ".npz with images float32 [N,3,32,32] in [0,1] and integer "
                                                   "labels [N], at least two classes"},
                        "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                        "filters": {"type": "string", "description": "JSON object of metadata filters"},
                        "rerank": {"type": "boolean", "default": False,
                                   "description": "re-score reachable models (metadata url) on the samples"},
                        "method": {"type": "string", "enum": ["leep", "nce"], "default": "leep"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "title": "QueryJSON",
                    "type": "object",
                    "required": ["vector"],
                    "properties": {
                        "vector": {"type": "array", "items": {"type": "number"}},
                        "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                        "filters": _FILTERS,
                    },
                }
            },
        },
    },
    "responses": {"200": {"description": "results: [{rank, id, score, metadata, rerank_score?}], calls, timing_ms"},
                  "413": {"description": "body too large"},
                  "422": {"description": "invalid samples, vector, k or filters"}},
}
