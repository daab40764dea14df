"""OpenAPI descriptions of the two endpoints that take either JSON or a multipart upload.

FastAPI derives a schema from typed parameters, but one parameter cannot be both JSON and a file upload, so
these two handlers read the body themselves and ``json_or_multipart`` describes their request bodies by hand.
"""
from typing import Any, Dict

from proxylab.service.payloads import RERANK_METHODS

_METADATA = {
    "type": "object",
    "required": ["name"],
    "description": "name (unique) plus optional task, family, arch, params (int), num_classes (int) and any JSON "
                   "extras; 'url' is refused (register by URL to make a model re-rankable)",
    "properties": {
        "name": {"type": "string"}, "task": {"type": "string"}, "family": {"type": "string"},
        "arch": {"type": "string"}, "params": {"type": "integer", "minimum": 0},
        "num_classes": {"type": "integer", "minimum": 2},
    },
    "not": {"required": ["url"]},
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

_K = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10}
_NPZ = {"type": "string", "format": "binary"}


def json_or_multipart(multipart: Dict[str, Any], json: Dict[str, Any], responses: Dict[int, str]) -> Dict[str, Any]:
    """``openapi_extra`` for a handler reading its own body: a multipart form or a JSON object (both required),
    plus the answers it gives (status -> description; 413, the body limit, applies to both)."""
    answers = {**responses, 413: "body over the service's limit (max_body_bytes in /v1/health)"}
    return {"requestBody": {"required": True,
                            "content": {"multipart/form-data": {"schema": {"type": "object", **multipart}},
                                        "application/json": {"schema": {"type": "object", **json}}}},
            "responses": {str(status): {"description": text} for status, text in sorted(answers.items())}}


REGISTER = json_or_multipart(
    multipart={"required": ["signature", "metadata"],
               "properties": {"signature": {**_NPZ, "description": ".npz made by `proxylab zoo signature` (the "
                                                                   "model stays with its owner)"},
                              "metadata": {"type": "string", "description": "JSON object, see RegisterJSON.metadata"}}},
    json={"title": "RegisterJSON", "required": ["metadata"],
          "properties": {"url": {"type": "string", "format": "uri",
                                 "description": "a model server (`proxylab zoo serve-model`) the service probes, "
                                                "within its outbound time and size limits"},
                         "seed": {"type": "integer", "minimum": 0, "description": "probe seed (url only)"},
                         "vector": {"type": "array", "items": {"type": "number"},
                                    "description": "a model vector made with this zoo's encoders"},
                         "metadata": _METADATA},
          "oneOf": [{"required": ["url"]}, {"required": ["vector"]}]},
    responses={201: "registered: the model's metadata with its new id", 401: "no or invalid bearer token",
               403: "read-only token", 409: "name already registered",
               422: "invalid signature, vector or metadata; a model server unreachable, too slow or too large"})

QUERY = json_or_multipart(
    multipart={"required": ["samples"],
               "properties": {"samples": {**_NPZ, "description": ".npz with images float32 [N,3,32,32] in [0,1] and "
                                                               "integer labels [N], at least two classes"},
                              "k": _K, "filters": {"type": "string", "description": "JSON object of metadata filters"},
                              "rerank": {"type": "boolean", "default": False,
                                         "description": "re-score models registered by URL on the samples"},
                              "method": {"type": "string", "enum": list(RERANK_METHODS), "default": "leep"}}},
    json={"title": "QueryJSON", "required": ["vector"],
          "properties": {"vector": {"type": "array", "items": {"type": "number"}}, "k": _K, "filters": _FILTERS}},
    responses={200: "results: [{rank, id, score, metadata, rerank_score?, rerank?}], calls, timing_ms",
               401: "no or invalid bearer token (invalid always; missing with --private)",
               422: "invalid samples, vector, k or filters"})
