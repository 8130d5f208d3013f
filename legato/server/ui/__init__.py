"""The operator page at `/ui`: static assets shipped in the package and the JSON it polls."""
