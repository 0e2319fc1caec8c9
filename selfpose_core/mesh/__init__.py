"""selfpose_core.mesh"""
