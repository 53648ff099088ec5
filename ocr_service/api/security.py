"""API keys: who may call the service, and whose tasks are whose.

With `OCR_API_KEYS` set, every data route needs a key, in `X-API-Key` or
`Authorization: Bearer`. A task belongs to the key that created it: the service
stores a fingerprint of the key (never the key), and other keys get 404 for it, as
if it did not exist. Keys are compared in constant time so a wrong guess tells
nothing about how close it was.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from ocr_service.api.state import state_of
from ocr_service.core.tasks import Caller

_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="One of OCR_API_KEYS")
_bearer = HTTPBearer(auto_error=False, description="One of OCR_API_KEYS, as a bearer token")


def fingerprint(key: str) -> str:
    """What a task stores as its owner: enough to match the key, useless to steal."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The configured keys; with none configured, every caller is let in as owner None."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def owner_of(self, presented: str | None) -> str | None:
        """The owner fingerprint for a valid key, else None."""
        if not presented:
            return None
        candidate = presented.encode()
        # Compare with every key (no early exit), so timing does not tell which matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return fingerprint(presented) if matched else None


def presented_key(headers: Headers) -> str | None:
    """The key a request carries, from either header."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def require_key(
    request: Request,
    _header: Annotated[str | None, Security(_key_header)] = None,
    _token: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> str | None:
    """The caller's owner fingerprint (None when keys are off); 401 without a valid key.

    The two Security parameters only document the schemes in OpenAPI; the key is read
    by `presented_key` so both headers behave the same everywhere (rate limits too).
    """
    keys = state_of(request.app).api_keys
    if not keys.enabled:
        return None
    owner = keys.owner_of(presented_key(request.headers))
    if owner is None:
        raise HTTPException(
            401,
            "a valid API key is required: send it in the X-API-Key header or as Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return owner


Owner = Annotated[str | None, Depends(require_key)]


def identify(request: Request, owner: Owner) -> Caller:
    """Who submits: the key's owner where keys are on, and the name their quotas count under."""
    if owner is not None:
        return Caller(owner, f"key:{owner[:16]}")
    return Caller(None, f"addr:{request.client.host if request.client else 'unknown'}")


Submitter = Annotated[Caller, Depends(identify)]
