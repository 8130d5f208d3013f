"""legato.bench"""
