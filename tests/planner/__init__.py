"""Tests of the planner client and the offline planner server."""
