"""selfpose_core.render"""
