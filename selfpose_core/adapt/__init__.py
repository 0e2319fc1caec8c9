"""selfpose_core.adapt"""
