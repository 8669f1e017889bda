"""What several test files share: module-level helpers here, fixtures in tests/conftest.py."""
