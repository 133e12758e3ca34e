"""The old import path of tests.support.ca_harness, kept until every caller imports that."""

from tests.support.ca_harness import *  # noqa: F403
