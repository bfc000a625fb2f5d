"""Benchmarks behind ``ramstrans bench``; nothing in the library imports them."""
