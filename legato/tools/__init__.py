"""legato.tools"""
