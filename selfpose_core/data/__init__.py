"""selfpose_core.data"""
