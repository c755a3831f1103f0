"""Matching: which transporters own a vehicle of a requested type near the pickup.

A bounding box on the (vehicle_type, lat, lng) index narrows the candidates; the haversine
distance decides. Fast for tens of thousands of vehicles without PostGIS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import psycopg

from libs.events.catalogue import Location

EARTH_RADIUS_KM = 6371.0088
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180

_NEARBY_TRANSPORTERS = """
SELECT DISTINCT transporter_id FROM vehicles
WHERE vehicle_type = ANY(%(types)s)
  AND lat BETWEEN %(lat_min)s AND %(lat_max)s
  AND lng BETWEEN %(lng_min)s AND %(lng_max)s
  AND 2 * %(earth)s * asin(sqrt(
        power(sin(radians(lat - %(lat)s) / 2), 2)
      + cos(radians(%(lat)s)) * cos(radians(lat)) * power(sin(radians(lng - %(lng)s) / 2), 2)
      )) <= %(radius)s
ORDER BY transporter_id
"""


def bounding_box(centre: Location, radius_km: float) -> dict[str, float]:
    """Latitude/longitude bounds that contain every point within `radius_km` of `centre`."""
    dlat = radius_km / KM_PER_DEGREE
    cos_lat = math.cos(math.radians(centre.lat))
    dlng = 180.0 if cos_lat < 1e-6 else min(180.0, dlat / cos_lat)
    return {
        "lat_min": centre.lat - dlat,
        "lat_max": centre.lat + dlat,
        "lng_min": centre.lng - dlng,
        "lng_max": centre.lng + dlng,
    }


async def nearby_transporters(
    conn: psycopg.AsyncConnection[Any], pickup: Location, types: Sequence[str], radius_km: float
) -> list[str]:
    """Transporters with a vehicle of one of `types` within `radius_km` of `pickup`, sorted."""
    params: dict[str, Any] = {
        "types": list(types),
        "lat": pickup.lat,
        "lng": pickup.lng,
        "radius": radius_km,
        "earth": EARTH_RADIUS_KM,
        **bounding_box(pickup, radius_km),
    }
    cur = await conn.execute(_NEARBY_TRANSPORTERS, params, prepare=True)
    return [row[0] for row in await cur.fetchall()]
