"""Kopf handlers for Stack, AgentTarget and Agent, over the pure functions in this package."""
