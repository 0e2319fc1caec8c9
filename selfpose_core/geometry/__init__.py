"""selfpose_core.geometry"""
