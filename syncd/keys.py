"""Audience name -> trait key, the way Segment Engage names audience traits."""

from __future__ import annotations

import inflection


def audience_key(name: str) -> str:
    """'Order Completed Last 30 Days' -> 'order_completed_last_30_days'."""
    return str(inflection.parameterize(inflection.underscore(name), "_"))
