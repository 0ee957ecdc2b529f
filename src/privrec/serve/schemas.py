"""Request and response bodies of the ``/v1`` API (pydantic; the OpenAPI spec is built from them).

Every request body is strict: unknown fields are errors, sizes are bounded (lists of items,
``k``, ε), so a malformed or oversized request is refused with 422 before any work is done.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from pydantic import Field

__all__ = [
    "CooccurrenceQuery",
    "ErrorResponse",
    "ItemCountsQuery",
    "RecommendRequest",
    "RecommendResponse",
    "SegmentCountsQuery",
    "TopKQuery",
]

ItemId = Annotated[str, Field(min_length=1, max_length=256)] | int
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class _Strict(pydantic.BaseModel):
    # strict types too: JSON ``true`` is not the item id 1 nor k = 1 nor ε = 1, and "1" is not a
    # number (an integer is still a valid float)
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)


class ErrorDetail(pydantic.BaseModel):
    status: int
    code: str
    message: str
    model_config = pydantic.ConfigDict(extra="allow")


class ErrorResponse(pydantic.BaseModel):
    """Every error: a status, a stable machine-readable ``code`` and one readable sentence."""

    error: ErrorDetail


class RecommendRequest(_Strict):
    """A user's own history (item ids of the model's catalogue) and how many items to return."""

    model: str = Field(pattern=MODEL_ID, description="Model id (see GET /v1/models).")
    history: list[ItemId] = Field(
        max_length=10_000, description="The user's items; unknown ids are ignored."
    )
    k: int = Field(default=10, ge=1, le=1000)


class ScoredItem(pydantic.BaseModel):
    item: str | int
    score: float


class RecommendResponse(pydantic.BaseModel):
    model: str
    items: list[ScoredItem]
    unknown_history_items: int
    guarantee: dict[str, Any] | None


class _Query(_Strict):
    epsilon: float = Field(gt=0, le=20, description="This query's own ε (PLD accountant).")
    delta: float | None = Field(
        default=None, gt=0, lt=0.5, description="This query's δ (default: the dataset budget's)."
    )
    purpose: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Purpose charged (default: the dataset policy's purpose).",
    )


class ItemCountsQuery(_Query):
    """Noisy number of users who interacted with each listed item."""

    items: list[ItemId] = Field(min_length=1, max_length=1000)


class TopKQuery(_Query):
    """The k most popular items by noisy counts over the whole catalogue."""

    k: int = Field(ge=1, le=1000)


class CooccurrenceQuery(_Query):
    """Noisy number of users who have both items, for every pair of a small item set."""

    items: list[ItemId] = Field(min_length=2, max_length=20)


class SegmentCountsQuery(_Query):
    """Noisy number of active users per declared value of a segment column."""

    column: str = Field(min_length=1, max_length=64)
    items: list[ItemId] | None = Field(
        default=None, min_length=1, max_length=1000, description="Count only users of these items."
    )
