"""Field types and response models shared by several resources."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, StringConstraints

from service.recommender import Recommendation

# Opaque ids: anything printable without whitespace or '/', so they are safe in a URL path.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\s/]+$")]


class Contribution(BaseModel):
    item_id: str
    score: float


class RecommendedItem(BaseModel):
    item_id: str
    artist_id: str
    score: float | None = None
    because: list[Contribution] | None = None

    @classmethod
    def of(cls, recommendation: Recommendation) -> RecommendedItem:
        because = recommendation.because
        return cls(
            item_id=recommendation.item_id,
            artist_id=recommendation.artist_id,
            score=recommendation.score,
            because=None
            if because is None
            else [Contribution(item_id=i, score=s) for i, s in because],
        )
