"""legato.programs"""
