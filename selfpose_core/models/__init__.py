"""selfpose_core.models"""
