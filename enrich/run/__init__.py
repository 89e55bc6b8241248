"""Enriching new listings: per-listing scoring (`score`), the resumable run loop (`loop`), where it runs (`engine`),
and why one listing got what it got (`explain`)."""
