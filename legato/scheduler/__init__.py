"""legato.scheduler"""
