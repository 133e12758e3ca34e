"""Test support: harnesses, fakes and builders shared by test modules (no tests here)."""
