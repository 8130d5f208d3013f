"""legato.engine_adapter"""
