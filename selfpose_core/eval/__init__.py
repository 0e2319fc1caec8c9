"""selfpose_core.eval"""
