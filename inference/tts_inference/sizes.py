"""Byte sizes, defined once."""

from __future__ import annotations

MIB = 1024 * 1024
