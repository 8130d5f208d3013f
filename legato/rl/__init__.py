"""legato.rl"""
