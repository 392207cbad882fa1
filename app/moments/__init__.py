"""The micro-moment catalogue: one detector per module."""

from app.moments.base import Moment
from app.moments.cart_abandonment import CartAbandonment
from app.moments.frustration import Frustration
from app.moments.local_intent import LocalIntent
from app.moments.post_purchase_howto import PostPurchaseHowto
from app.moments.price_comparison import PriceComparison
from app.moments.review_seeking import ReviewSeeking

# In the order triggers of one event are reported.
MOMENT_TYPES: tuple[type[Moment], ...] = (
    PriceComparison,
    ReviewSeeking,
    CartAbandonment,
    PostPurchaseHowto,
    LocalIntent,
    Frustration,
)

__all__ = ["MOMENT_TYPES", "Moment"]
