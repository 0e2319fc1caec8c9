"""selfpose_core.estimate"""
