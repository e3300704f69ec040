"""The rules, pure: encryption outcomes, key policies and grants, sharing, state machines."""
