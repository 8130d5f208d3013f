"""legato.cache"""
