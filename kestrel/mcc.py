"""Merchant category codes (MCC) and the spending category each one stands for.

Customer insights group spend by category ("groceries", "fuel", …), and a four-digit code means
nothing to the reader of an insight; this table is the one place that turns codes into names.
The transaction simulator draws its terminals' MCCs from the same table, so every simulated
code has a category.
"""

from __future__ import annotations

CASH_MCC = "6011"
UNKNOWN_CATEGORY = "other"

MCC_CATEGORIES: dict[str, str] = {
    "4111": "transport",
    "4121": "taxi",
    "5311": "department_stores",
    "5411": "groceries",
    "5541": "fuel",
    "5651": "clothing",
    "5732": "electronics",
    "5812": "restaurants",
    "5814": "fast_food",
    "5815": "digital_goods",
    "5912": "pharmacy",
    "5999": "retail_other",
    CASH_MCC: "cash",
    "7011": "hotels",
}


def category_of(mcc: str) -> str:
    """The category name of ``mcc``; ``"other"`` for a code not in the table."""
    return MCC_CATEGORIES.get(mcc, UNKNOWN_CATEGORY)
