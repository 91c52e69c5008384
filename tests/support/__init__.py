"""Helpers shared by several test modules: data builders, tiny towers, stores, HTTP clients.

Test modules import helpers from here (or fixtures from a conftest.py), never from another
test module (``tests/unit/test_test_layout.py`` holds the rule).
"""
